"""``regbench bench``: how fast the pieces that dominate run time are, against diffdrr.

Eight sections, one long csv (``section, name, size, metric, value, unit, device``) and a
Markdown summary with the ratios:

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
* ``dag``: wall seconds per rule of a finished run, from Snakemake's ``benchmark:`` files.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from regbench import evaluate
from regbench.data.embedded import prepare_embedded
from regbench.data.prepare import geometry_from_config
from regbench.data.subject import Prepared
from regbench.drift import offset_start
from regbench.geometry.poses import carm_params, carm_pose, perturb
from regbench.geometry.priors import PosePrior
from regbench.io import write_csv, write_text
from regbench.methods.base import Context, Trace
from regbench.methods.diffpose import DiffPose
from regbench.methods.ncc_lm import MultiscaleNCCResidual, register_lm_ncc
from regbench.rendering.compiled_projector import FastProjector
from regbench.rendering.renderer import Renderer, make_renderer
from regbench.rendering.torch_projector import FeatureProjector

log = logging.getLogger(__name__)

SECTIONS = ("render", "jacobian", "convergence", "minimum", "capture", "training", "seeds", "dag")
COLUMNS = ["section", "name", "size", "metric", "value", "unit", "device"]
REFERENCE = "diffdrr trilinear"


@dataclass(frozen=True)
class BenchSettings:
    """One bench run: the problem sizes of the command line and, from the validated config,
    the detector, pose prior, rendering and convergence settings of the workflow, so the bench
    measures the problems the workflow solves instead of a copy of their defaults."""

    out_dir: Path
    sections: tuple[str, ...]
    # render and jacobian: one fixed CT spacing and samples per ray across the sizes
    sizes: tuple[int, ...]
    spacing_mm: float
    n_points: int
    repeats: int
    jacobian_size: int
    # convergence: the embedded subject as the workflow registers it
    convergence_spacing_mm: float
    convergence_n_points: int
    convergence_size: int
    n_xrays: int
    lm_iterations: int
    seed: int
    diffpose: dict
    # every section's CT and detector
    detector: dict
    prior: dict
    min_label_voxels: int
    bone_attenuation: float
    # minimum, training and dag: a finished run
    benchmarks: Path | None = None
    runs: Path | None = None
    minimum_xrays: int = 10
    training_steps: tuple[int, ...] = (0, 30, 60, 120)
    training_variant: str = "ours-so4"
    seed_variants: tuple[str, ...] = ("ours-so4", "abl-euclidean", "abl-hyperbolic")
    training_seeds: int = 3
    capture_methods: tuple[str, ...] = ("ours-so4", "abl-euclidean", "abl-hyperbolic")
    capture_offsets: tuple[tuple[float, float], ...] = ((5.0, 10.0), (10.0, 20.0), (20.0, 40.0))
    capture_lm_iterations: int | None = None

    @classmethod
    def from_config(cls, cfg: dict, **options: Any) -> BenchSettings:
        """``cfg``: a config validated against the schema (so every key is filled);
        ``options``: the command line's fields."""
        embedded = cfg["datasets"]["embedded"]
        return cls(
            convergence_spacing_mm=embedded["spacing_mm"],
            convergence_n_points=cfg["render"]["n_points"],
            convergence_size=int(cfg["geometry"]["height"]),
            seed=cfg["seed"],
            diffpose=cfg["diffpose"],
            detector=cfg["geometry"],
            prior=cfg["prior"],
            min_label_voxels=embedded["min_label_voxels"],
            bone_attenuation=cfg["render"]["bone_attenuation"],
            **options,
        )


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` after one warm-up call (compilation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_subject(spacing_mm: float, size: int, detector: dict, min_label_voxels: int) -> Prepared:
    """The bundled chest CT at ``spacing_mm`` with the config's ``detector`` at ``size`` x
    ``size`` pixels."""
    subject = prepare_embedded(spacing_mm=spacing_mm, min_label_voxels=min_label_voxels)
    geometry = geometry_from_config({**detector, "height": size, "width": size})
    return Prepared(subject.ct, subject.affine, subject.landmarks, geometry)


def _view() -> torch.Tensor:
    """A pose near the prior's mean, slightly rotated (no axis-aligned special case)."""
    rot = torch.tensor([[0.05, -0.03, 0.02]], dtype=torch.float64)
    return carm_pose(rot, torch.tensor([[3.0, 850.0, -2.0]], dtype=torch.float64))


def render_rows(
    prepared: Prepared,
    n_points: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    bone_attenuation: float,
) -> list[dict]:
    """Section ``render`` at the prepared subject's detector size."""
    size = int(prepared.geometry["height"])
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    siddon = make_renderer(prepared, bone_attenuation, "siddon", device)
    drr = trilinear.drr
    pose = _view().to(device)
    rot0, trans0 = carm_params(pose.float())

    def diffdrr_backward(renderer: Renderer) -> Callable[[], None]:
        def run() -> None:
            rot = rot0.clone().requires_grad_(True)
            trans = trans0.clone().requires_grad_(True)
            renderer.render(carm_pose(rot, trans), n_points).sum().backward()

        return run

    density = drr.density.to(dtype)
    torch_proj = FeatureProjector.from_drr(drr).to(device)
    torch_table = torch_proj.prepare(density)
    cases: dict[str, dict[str, Callable[[], object]]] = {
        REFERENCE: {
            "forward": lambda: trilinear.render(pose, n_points),
            "forward+backward": diffdrr_backward(trilinear),
        },
        "diffdrr siddon": {
            "forward": lambda: siddon.render(pose, n_points),
            "forward+backward": diffdrr_backward(siddon),
        },
        "regbench torch": {
            "forward": lambda: torch_proj(torch_table, pose, n_points),
            "forward+jacobian": lambda: torch_proj.forward_and_jacobian(
                torch_table, pose, n_points
            ),
        },
    }
    if device.type == "cpu":
        fast = FastProjector.from_drr(drr)
        fast_table = fast.prepare(density)

        def fast_backward() -> None:
            rot = rot0.double().clone().requires_grad_(True)
            trans = trans0.double().clone().requires_grad_(True)
            fast(fast_table, carm_pose(rot, trans), n_points).sum().backward()

        cases["regbench compiled"] = {
            "forward": lambda: fast(fast_table, pose, n_points),
            "forward+backward": fast_backward,
            "forward+jacobian": lambda: fast.forward_and_jacobian(fast_table, pose, n_points),
        }

    with torch.no_grad():
        reference = trilinear.render(pose, n_points).double()
    rows = []
    samples = size * size * n_points
    for name, modes in cases.items():
        forward = modes["forward"]
        with torch.no_grad():
            image = forward().double().reshape(reference.shape)
        rel = float((image - reference).norm() / reference.norm())
        rows.append(_row("render", name, size, "relative L2 to " + REFERENCE, rel, "", device))
        for mode, fn in modes.items():
            grad = mode != "forward"
            with torch.set_grad_enabled(grad):
                seconds = _median_seconds(fn, repeats, device)
            rows += [
                _row("render", name, size, f"{mode} ms", 1e3 * seconds, "ms", device),
                _row("render", name, size, f"{mode} images/s", 1 / seconds, "1/s", device),
                _row(
                    "render", name, size, f"{mode} Msamples/s", samples / seconds / 1e6, "", device
                ),
            ]
        log.info("render %s %d px done", name, size)
    return rows


def jacobian_rows(
    prepared: Prepared, n_points: int, repeats: int, device: torch.device, bone_attenuation: float
) -> list[dict]:
    """Section ``jacobian``: seconds for one (H*W, 6) pose Jacobian."""
    size = int(prepared.geometry["height"])
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    drr = trilinear.drr
    pose = _view().to(device)
    torch_proj = FeatureProjector.from_drr(drr).to(device)
    torch_table = torch_proj.prepare(drr.density)
    rot0, trans0 = carm_params(pose.float())

    def finite_differences() -> None:
        with torch.no_grad():
            for k in range(6):
                for sign in (1.0, -1.0):
                    xi = torch.zeros(1, 6, dtype=pose.dtype, device=device)
                    xi[0, k] = sign * 1e-3
                    trilinear.render(perturb(pose, xi), n_points)

    def one_pixel_backward() -> None:
        rot = rot0.clone().requires_grad_(True)
        trans = trans0.clone().requires_grad_(True)
        trilinear.render(carm_pose(rot, trans), n_points)[0, 0, size // 2, size // 2].backward()

    cases: dict[str, tuple[Callable[[], object], float]] = {
        "per-ray analytic (torch)": (
            lambda: torch_proj.forward_and_jacobian(torch_table, pose, n_points),
            1.0,
        ),
        "forward-mode autodiff (torch projector)": (
            lambda: torch_proj.pose_jacobian(torch_table, pose, n_points, method="forward"),
            1.0,
        ),
        "central differences (diffdrr, 12 renders)": (finite_differences, 1.0),
        # One backward per pixel: measured for one pixel, times the number of pixels.
        "reverse mode (diffdrr, extrapolated)": (one_pixel_backward, float(size * size)),
    }
    if device.type == "cpu":
        fast = FastProjector.from_drr(drr)
        fast_table = fast.prepare(drr.density)
        cases = {
            "per-ray analytic (compiled)": (
                lambda: fast.forward_and_jacobian(fast_table, pose, n_points),
                1.0,
            ),
            **cases,
        }
    rows = []
    for name, (fn, factor) in cases.items():
        seconds = _median_seconds(fn, 1 if factor > 1 else repeats, device) * factor
        rows.append(_row("jacobian", name, size, "seconds", seconds, "s", device))
        log.info("jacobian %s: %.4f s", name, seconds)
    return rows


def convergence_rows(
    prepared: Prepared,
    n_points: int,
    n_xrays: int,
    seed: int,
    diffpose_settings: dict,
    lm_iterations: int,
    device: torch.device,
    prior: PosePrior,
    bone_attenuation: float,
) -> tuple[list[dict], pd.DataFrame]:
    """Section ``convergence``; also returns every trajectory (for the figure-minded)."""
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    drr = trilinear.drr
    compiled = device.type == "cpu"  # the compiled projector is CPU-only
    projector = (FastProjector if compiled else FeatureProjector).from_drr(drr).to(device)
    table = projector.prepare(drr.density)
    generator = torch.Generator().manual_seed(seed)
    truths = prior.sample(n_xrays, generator)
    points = prepared.points
    length = float(np.linalg.norm(points - points.mean(0), axis=1).mean())
    patch = diffpose_settings["patch_size"]

    def lm(target: torch.Tensor, init: torch.Tensor, trace: Trace) -> None:
        register_lm_ncc(
            lambda pose: projector.forward_and_jacobian(table, pose, n_points),
            lambda pose: projector(table, pose, n_points),
            MultiscaleNCCResidual(target, patch),
            init,
            lm_iterations,
            length,
            callback=trace.record,
        )

    def adam(renderer: str) -> Callable[[torch.Tensor, torch.Tensor, Trace], object]:
        context = Context(
            make_renderer(prepared, bone_attenuation, renderer, device),
            None,
            n_points,
            {"diffpose": diffpose_settings},
        )
        return DiffPose(context).refine

    kind = "compiled" if compiled else "torch"
    optimizers = {
        f"LM ({kind} projector)": lm,
        "Adam, DiffPose recipe (diffdrr)": adam("trilinear"),
    }
    if compiled:
        optimizers["Adam, DiffPose recipe (compiled projector)"] = adam("compiled")
    trajectories = []
    for i in tqdm(range(n_xrays), desc="convergence", mininterval=5):
        truth = truths[i]
        with torch.no_grad():
            target = trilinear.render(truth[None], n_points)
        init = offset_start(truth, generator, 5.0, 10.0)
        for name, optimize in optimizers.items():
            trace = Trace()
            trace.record(0, init)
            optimize(target, init, trace)
            poses = np.stack([p.numpy() for p in trace.poses])
            errors = evaluate.mtre(poses, truth.numpy()[None].repeat(len(poses), 0), points)
            trajectories.append(
                pd.DataFrame(
                    {
                        "xray": i,
                        "optimizer": name,
                        "iteration": trace.iterations,
                        "seconds": trace.seconds,
                        "mtre_mm": errors,
                    }
                )
            )
    traj = pd.concat(trajectories, ignore_index=True)
    size = int(prepared.geometry["height"])
    rows = []
    for name, group in traj.groupby("optimizer", sort=False):
        reached = group[group["mtre_mm"] < 1.0].groupby("xray").first()
        final = group.groupby("xray").last()
        per_iteration = (final["seconds"] - group.groupby("xray").first()["seconds"]) / final[
            "iteration"
        ].clip(lower=1)
        values = {
            "CT spacing (mm)": (float(abs(prepared.affine[0, 0])), "mm"),
            "samples per ray": (float(n_points), ""),
            "X-rays": (float(group["xray"].nunique()), ""),
            "reached sub-mm (%)": (100.0 * len(reached) / group["xray"].nunique(), "%"),
            "median seconds to sub-mm": (_median_or_inf(reached["seconds"], final), "s"),
            "median iterations to sub-mm": (_median_or_inf(reached["iteration"], final), ""),
            "median final mTRE": (float(final["mtre_mm"].median()), "mm"),
            "median seconds per iteration": (float(per_iteration.median()), "s"),
        }
        rows += [
            _row("convergence", name, size, metric, value, unit, device)
            for metric, (value, unit) in values.items()
        ]
    return rows, traj


def _median_or_inf(reached: pd.Series, final: pd.DataFrame) -> float:
    """Median over all X-rays, counting those that never reached sub-mm as +inf."""
    values = np.full(len(final), math.inf)
    values[: len(reached)] = reached.to_numpy(float)
    return float(np.median(values))


def training_rows(
    runs: Path,
    variant: str,
    steps: tuple[int, ...],
    n_xrays: int,
    out_dir: Path,
    device: torch.device,
) -> list[dict]:
    """Section ``training``: accuracy of ``variant`` after each number of training steps
    (``training.csv`` per X-ray, ``training_curve.png``), from both starts."""
    from regbench.figures import training_curve_figure
    from regbench.training_curve import training_curve

    frame = pd.DataFrame(training_curve(runs, variant, list(steps), n_xrays))
    write_csv(frame, out_dir / "training.csv")
    training_curve_figure(frame, out_dir / "training_curve", variant)
    rows = []
    for (n_steps, start), block in frame.groupby(["steps", "start"], sort=False):
        name = f"{variant}, from the {start}"
        errors = block["mtre_mm"]
        rows += [
            _row("training", name, n_steps, "median mTRE", errors.median(), "mm", device),
            _row("training", name, n_steps, "mean mTRE", errors.mean(), "mm", device),
            _row("training", name, n_steps, "SMSR", 100 * (errors < 1).mean(), "%", device),
        ]
    return rows


def capture_rows(
    runs: Path,
    methods: tuple[str, ...],
    offsets: tuple[tuple[float, float], ...],
    n_xrays: int,
    seed: int,
    out_dir: Path,
    device: torch.device,
    lm_iterations: int | None = None,
) -> list[dict]:
    """Section ``capture``: per method and offset (``size`` is the offset's index), the offset,
    the starts' median mTRE, SMSR and the median and mean final mTRE (``capture.csv`` per
    X-ray, ``capture.png``). Failed registrations count as misses. ``lm_iterations``: LM's
    first pass instead of the run's, for every rerun registration (0 in the rows: the run's)."""
    from regbench.drift import refine_from_offsets
    from regbench.figures import capture_figure

    frame = pd.DataFrame(refine_from_offsets(runs, n_xrays, offsets, methods, seed, lm_iterations))
    write_csv(frame, out_dir / "capture.csv")
    summary = []
    for name, block in frame.groupby("method", sort=False):
        for k, (deg, mm) in enumerate(offsets):
            one = block[(block["offset_deg"] == deg) & (block["offset_mm"] == mm)]
            s = evaluate.summarize(
                one["mtre_mm"].to_numpy(), np.zeros(len(one)), one["status"].to_numpy(), n_boot=0
            )
            summary.append({
                "method": name, "offset": k, "offset deg": deg, "offset mm": mm,
                "X-rays": len(one), "LM iterations": lm_iterations or 0,
                "start median mTRE": one["mtre_init_mm"].median(), "SMSR": 100 * s["smsr"],
                "median mTRE": s["median_mm"], "mean mTRE": s["mean_mm"],
            })  # fmt: skip
    capture_figure(pd.DataFrame(summary), out_dir / "capture")
    units = {
        "offset deg": "deg", "offset mm": "mm", "X-rays": "", "LM iterations": "",
        "start median mTRE": "mm", "SMSR": "%", "median mTRE": "mm", "mean mTRE": "mm",
    }  # fmt: skip
    return [
        _row("capture", r["method"], r["offset"], metric, r[metric], unit, device)
        for r in summary
        for metric, unit in units.items()
    ]


def capture_markdown(capture: pd.DataFrame) -> str:
    """SMSR, median and mean mTRE (the mean over registrations that returned a pose, as in
    Table 3) per method (rows) and start offset (columns)."""
    table = capture.pivot_table(
        index=["name", "size"], columns="metric", values="value", sort=False
    )
    offsets = table.groupby(level="size").first()
    labels = [
        f"{r['offset deg']:g} deg / {r['offset mm']:g} mm (start {r['start median mTRE']:.1f} mm)"
        for _, r in offsets.iterrows()
    ]
    iterations = int(table["LM iterations"].max())
    budget = f"LM's first pass {iterations} iterations" if iterations else "the run's settings"
    lines = [
        f"## Capture range: SMSR (%) / median / mean mTRE (mm) from the truth moved by each offset "
        f"({table['X-rays'].max():.0f} X-rays, {budget}; start: its median mTRE)\n",
        "| method | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in table.index.get_level_values("name").unique():
        cells = [
            f"{table.loc[(name, k), 'SMSR']:.0f} / {table.loc[(name, k), 'median mTRE']:.3g} / "
            f"{table.loc[(name, k), 'mean mTRE']:.3g}"
            for k in offsets.index
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_rows(
    runs: Path, variants: tuple[str, ...], repeats: int, out_dir: Path, device: torch.device
) -> list[dict]:
    """Section ``seeds``: each variant's mean mTRE per training seed (0: the run's own model;
    ``seeds.csv`` per X-ray)."""
    from regbench.training_curve import training_spread

    frame = pd.DataFrame(training_spread(runs, list(variants), repeats))
    write_csv(frame, out_dir / "seeds.csv")
    means = frame.groupby(["variant", "training_seed"], sort=False)["mtre_mm"].mean()
    return [
        _row("seeds", variant, k, "mean mTRE", value, "mm", device)
        for (variant, k), value in means.items()
    ]


def seeds_markdown(seeds: pd.DataFrame) -> str:
    """Mean mTRE per variant and training seed, their mean and spread over trainings, and each
    variant's paired difference to the first variant (same training seed)."""
    table = seeds.pivot_table(index="name", columns="size", values="value", sort=False)
    first = table.index[0]
    lines = [
        "## Spread between trainings: mean mTRE (mm) per training seed (0: the run's own model)\n",
        "| method | "
        + " | ".join(str(k) for k in table.columns)
        + f" | mean ± std | minus {first} (paired) | below {first} |",
        "|---|" + "---|" * (len(table.columns) + 3),
    ]

    def sample_std(values: pd.Series) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    for name, values in table.iterrows():
        diff = values - table.loc[first]
        spread = f"{values.mean():.3f} ± {sample_std(values):.3f}"
        paired = "–" if name == first else f"{diff.mean():+.3f} ± {sample_std(diff):.3f}"
        below = "–" if name == first else f"{int((diff < 0).sum())} of {len(diff)}"
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {spread} | {paired} | {below} |")
    return "\n".join(lines) + "\n"


def dag_rows(benchmarks: Path, device: torch.device) -> list[dict]:
    """Section ``dag``: per-rule sums of Snakemake benchmark files under ``benchmarks``."""
    rows = []
    files = sorted(benchmarks.rglob("*.tsv"))
    if not files:
        return rows
    per_rule: dict[str, list[pd.DataFrame]] = {}
    for path in files:
        parts = path.relative_to(benchmarks).parts  # rule/.../job.tsv or rule.tsv
        rule = parts[0] if len(parts) > 1 else path.stem
        per_rule.setdefault(rule, []).append(pd.read_csv(path, sep="\t"))
    for rule, frames in sorted(per_rule.items()):
        frame = pd.concat(frames)
        rows += [
            _row("dag", rule, 0, "jobs", float(len(frame)), "", device),
            _row("dag", rule, 0, "total seconds", float(frame["s"].sum()), "s", device),
            _row("dag", rule, 0, "max RSS", float(frame["max_rss"].max()), "MB", device),
        ]
    return rows


def _row(section, name, size, metric, value, unit, device) -> dict:
    return {
        "section": section,
        "name": name,
        "size": int(size),
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "device": device_name(device),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def summary_markdown(rows: pd.DataFrame) -> str:
    """The csv as readable tables, with every time also as a ratio to the reference."""
    device = ", ".join(sorted(rows["device"].unique()))
    parts = [f"# regbench bench\n\nDevice: {device}\n"]
    render_part = rows[(rows["section"] == "render") & rows["metric"].str.endswith(" ms")]
    if len(render_part):
        parts.append(
            "## Rendering (ms per image; in brackets: speed-up over diffdrr trilinear forward, "
            "resp. forward+backward)\n"
        )
        for size, block in render_part.groupby("size"):
            ref = block[block["name"] == REFERENCE].set_index("metric")["value"]
            lines = [
                f"### {size} x {size}\n",
                "| renderer | mode | ms | speed-up |",
                "|---|---|---|---|",
            ]
            for _, r in block.iterrows():
                mode = r["metric"].removesuffix(" ms")
                base = ref.get("forward ms" if mode == "forward" else "forward+backward ms")
                ratio = f"{base / r['value']:.1f}x" if base else ""
                lines.append(f"| {r['name']} | {mode} | {r['value']:.1f} | {ratio} |")
            parts.append("\n".join(lines) + "\n")
        diffs = rows[rows["metric"].str.startswith("relative L2")]
        lines = [
            "Relative L2 difference of each image to diffdrr trilinear:\n",
            "| renderer | size | relative L2 |",
            "|---|---|---|",
        ]
        lines += [f"| {r['name']} | {r['size']} | {r['value']:.2e} |" for _, r in diffs.iterrows()]
        parts.append("\n".join(lines) + "\n")
    jac = rows[rows["section"] == "jacobian"]
    if len(jac):
        fastest = jac["value"].min()
        lines = [
            f"## Pose Jacobian of one image ({jac['size'].iloc[0]} x {jac['size'].iloc[0]})\n",
            "| method | seconds | x fastest |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['value']:.4g} | {r['value'] / fastest:.1f} |"
            for _, r in jac.iterrows()
        ]
        parts.append("\n".join(lines) + "\n")
    conv = rows[rows["section"] == "convergence"]
    if len(conv):
        table = conv.pivot_table(index="metric", columns="name", values="value", sort=False)
        names = list(table.columns)
        lines = [
            f"## Time to sub-millimetre mTRE from a 5 deg / 10 mm start "
            f"({conv['size'].iloc[0]} x {conv['size'].iloc[0]}, DRR vs DRR, multiscale NCC)\n",
            "| metric | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for metric, values in table.iterrows():
            lines.append(f"| {metric} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
        secs = table.loc["median seconds to sub-mm"]
        lm = [n for n in names if n.startswith("LM")]
        if lm and math.isfinite(secs[lm[0]]) and secs[lm[0]] > 0:
            lines.append("")
            for adam in (n for n in names if n.startswith("Adam")):
                lines.append(
                    f"- {lm[0]} reaches sub-mm {secs[adam] / secs[lm[0]]:.1f}x sooner than "
                    f"{adam} (median seconds)."
                )
        parts.append("\n".join(lines) + "\n")
    drift = rows[rows["section"] == "minimum"]
    if len(drift):
        table = drift.pivot_table(index="name", columns="metric", values="value", sort=False)
        lines = [
            f"## Started at the ground truth: median drift over {drift['size'].iloc[0]} X-rays "
            "(mm; a refiner whose minimum is at the truth stays near 0)\n",
            "| method | mTRE | depth | in-plane |",
            "|---|---|---|---|",
        ]
        for name, r in table.iterrows():
            lines.append(
                f"| {name} | {r['median drift mTRE']:.3f} | {r['median drift depth']:.3f} | "
                f"{r['median drift in-plane']:.3f} |"
            )
        parts.append("\n".join(lines) + "\n")
    capture = rows[rows["section"] == "capture"]
    if len(capture):
        parts.append(capture_markdown(capture))
    curve = rows[rows["section"] == "training"]
    if len(curve):
        lines = [
            "## Training steps vs accuracy (learned similarity retrained on a finished run)\n",
            "| start | training steps | median mTRE (mm) | mean mTRE (mm) | SMSR (%) |",
            "|---|---|---|---|---|",
        ]
        table = curve.pivot_table(
            index=["name", "size"], columns="metric", values="value", sort=False
        )
        for (name, n_steps), r in table.iterrows():
            lines.append(
                f"| {name} | {n_steps} | {r['median mTRE']:.3f} | {r['mean mTRE']:.3f} | "
                f"{r['SMSR']:.0f} |"
            )
        parts.append("\n".join(lines) + "\n")
    seeds = rows[rows["section"] == "seeds"]
    if len(seeds):
        parts.append(seeds_markdown(seeds))
    dag = rows[rows["section"] == "dag"]
    if len(dag):
        table = dag.pivot_table(index="name", columns="metric", values="value")
        total = table["total seconds"].sum()
        lines = [
            "## DAG: seconds per rule (sum over jobs, from Snakemake's benchmark files)\n",
            "| rule | jobs | seconds | share | max RSS (MB) |",
            "|---|---|---|---|---|",
        ]
        for rule, r in table.sort_values("total seconds", ascending=False).iterrows():
            lines.append(
                f"| {rule} | {r['jobs']:.0f} | {r['total seconds']:.0f} | "
                f"{100 * r['total seconds'] / total:.0f}% | {r['max RSS']:.0f} |"
            )
        lines.append(
            f"\nSum of job times: {total:.0f} s (jobs run in parallel: wall time is less)."
        )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def run_bench(settings: BenchSettings, device: torch.device) -> pd.DataFrame:
    """Run the chosen sections; write ``bench.csv``, ``bench.md`` (and the convergence
    trajectories) under ``out_dir``. Rows of other sections already in ``bench.csv`` are kept,
    so one section can be remeasured alone."""
    b = settings
    out_dir, sections = b.out_dir, b.sections
    torch.manual_seed(b.seed)
    subjects: dict[tuple[float, int], Prepared] = {}

    def at(size: int, spacing: float = b.spacing_mm) -> Prepared:
        if (spacing, size) not in subjects:
            subjects[spacing, size] = bench_subject(spacing, size, b.detector, b.min_label_voxels)
        return subjects[spacing, size]

    rows: list[dict] = []
    if "render" in sections:
        for size in b.sizes:
            rows += render_rows(
                at(size), b.n_points, b.repeats, device, torch.float32, b.bone_attenuation
            )
    if "jacobian" in sections:
        rows += jacobian_rows(
            at(b.jacobian_size), b.n_points, b.repeats, device, b.bone_attenuation
        )
    if "convergence" in sections:
        conv, traj = convergence_rows(
            at(b.convergence_size, b.convergence_spacing_mm),
            b.convergence_n_points,
            b.n_xrays,
            b.seed,
            b.diffpose,
            b.lm_iterations,
            device,
            PosePrior.from_config(b.prior),
            b.bone_attenuation,
        )
        rows += conv
        write_csv(traj, out_dir / "convergence.trajectory.csv")
    if "minimum" in sections and b.runs is not None:
        from regbench.drift import drift_from_truth, drift_summary

        drift = drift_from_truth(b.runs, b.minimum_xrays)
        write_csv(pd.DataFrame(drift), out_dir / "minimum.csv")
        rows += [
            _row("minimum", name, b.minimum_xrays, metric, value, "mm", device)
            for name, metric, value in drift_summary(drift)
        ]
    if "capture" in sections and b.runs is not None:
        rows += capture_rows(
            b.runs,
            b.capture_methods,
            b.capture_offsets,
            b.minimum_xrays,
            b.seed,
            out_dir,
            device,
            b.capture_lm_iterations,
        )
    if "training" in sections and b.runs is not None:
        rows += training_rows(
            b.runs, b.training_variant, b.training_steps, b.minimum_xrays, out_dir, device
        )
    if "seeds" in sections and b.runs is not None:
        rows += seed_rows(b.runs, b.seed_variants, b.training_seeds, out_dir, device)
    if "dag" in sections and b.benchmarks is not None:
        rows += dag_rows(b.benchmarks, device)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    previous = out_dir / "bench.csv"
    if previous.is_file():  # keep the sections not rerun this time
        kept = pd.read_csv(previous)
        kept = kept[~kept["section"].isin(frame["section"].unique())]
        frame = pd.concat([kept, frame], ignore_index=True)
        frame["order"] = frame["section"].map({s: i for i, s in enumerate(SECTIONS)})
        frame = frame.sort_values("order", kind="stable").drop(columns="order")
    write_csv(frame, out_dir / "bench.csv")
    write_text(summary_markdown(frame), out_dir / "bench.md")
    return frame
