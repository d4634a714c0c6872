"""``regbench bench``: how fast the pieces that dominate run time are, against diffdrr.

Nine sections (one module each, or a group of them), one long csv (``section, name, size,
metric, value, unit, device``) and a Markdown summary with the ratios:

* ``render``: images/s and ray-samples/s of diffdrr's trilinear and Siddon renderers, the
  project's torch projector and its compiled CPU projector, forward and forward+backward (the
  gradient w.r.t. the pose) or forward+Jacobian, on the same CT, pose and detector, at several
  image sizes; relative L2 difference of each image to diffdrr's trilinear one.
* ``jacobian``: cost of the 6-column pose Jacobian of a rendered image at one size: per-ray
  analytic (compiled and torch), forward-mode autodiff, central finite differences with diffdrr,
  and reverse mode (one backward per pixel, extrapolated from one).
* ``convergence``: LM on the multiscale-NCC residual (compiled projector, exact Jacobian) vs
  DiffPose's Adam recipe (diffdrr) on the same objective and the same DRR-vs-DRR problems from a
  5 degree / 10 mm start: time and iterations to sub-millimetre mTRE, final mTRE.
* ``minimum``: every refiner of a finished run started at the ground truth
  (:mod:`regbench.drift`): median drift in mTRE, depth and in-plane, so a misplaced minimum
  shows before a table is read.
* ``capture``: refiners of a finished run started at the truth moved by growing offsets
  (:func:`regbench.drift.refine_from_offsets`; the same directions for every method): SMSR
  and median mTRE per offset, the capture range the paper claims for its spherical similarity.
* ``training``: one learned similarity of a finished run retrained for several step counts
  (:mod:`regbench.training_curve`), registered from the regressor's start and from the truth;
  meant for a validation run.
* ``seeds``: learned similarities of a finished run retrained with other training seeds
  (:func:`regbench.training_curve.training_spread`), registered on every X-ray: the spread
  between trainings, and each variant's paired difference to the first, so a table's ranking
  can be read against it.
* ``latents``: one learned similarity of a finished run registered under each latent geometry,
  its encoder features on and off (:mod:`regbench.latent_swap`): with them off the geometries
  share their minimiser, so what then differs is the optimiser's, the resolution of Table 3's
  latent rows.
* ``dag``: wall seconds per rule of a finished run, from Snakemake's ``benchmark:`` files.
"""

from regbench.bench.common import row
from regbench.bench.dag import dag_rows
from regbench.bench.markdown import capture_markdown, seeds_markdown, summary_markdown
from regbench.bench.run import run_bench
from regbench.bench.settings import COLUMNS, REFERENCE, SECTIONS, BenchSettings

__all__ = [
    "COLUMNS",
    "REFERENCE",
    "SECTIONS",
    "BenchSettings",
    "capture_markdown",
    "dag_rows",
    "row",
    "run_bench",
    "seeds_markdown",
    "summary_markdown",
]
