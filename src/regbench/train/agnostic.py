"""Patient-agnostic training of the pose regressor: one model for several training subjects.

The loop is :func:`regbench.train.regressor.train_regressor`'s, except that every step renders its
batch from one training subject drawn uniformly (with the run's generator, so a rerun draws the
same sequence). Subjects are loaded on demand and the DRRs of the most recent ``cache_size`` are
kept, so training sets larger than memory work. The checkpoint has the same fingerprint keys as a
per-subject regressor, so ``register`` loads it with :func:`~regbench.train.regressor.load_regressor`;
the training subjects are recorded in the config snapshot beside it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from regbench.errors import InputError
from regbench.io import write_json
from regbench.models.regressor import PoseRegressor
from regbench.render import load_prepared, make_drr, read_geometry
from regbench.train.regressor import regressor_settings, run_regressor_training

log = logging.getLogger(__name__)


class SubjectDRRs:
    """DRR modules of prepared subject folders, built on first use, at most ``size`` kept."""

    def __init__(self, folders: Sequence[Path], settings: dict, device: torch.device, size: int):
        self.folders, self.settings, self.device = list(folders), settings, device
        self.size = max(1, size)
        self._cache: OrderedDict[int, torch.nn.Module] = OrderedDict()

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int):
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        render_cfg = self.settings["render"]
        drr = make_drr(
            load_prepared(self.folders[i]),
            render_cfg["bone_attenuation"],
            render_cfg["renderer"],
            self.device,
        )
        self._cache[i] = drr
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return drr


def check_same_detector(folders: Sequence[Path]) -> None:
    """Training images must share one size; the detectors may differ otherwise (real data)."""
    sizes = {}
    for folder in folders:
        g = read_geometry(Path(folder) / "geometry.json")
        sizes.setdefault((int(g["height"]), int(g["width"])), []).append(str(folder))
    if len(sizes) > 1:
        raise InputError(f"training subjects have different image sizes: {sizes}")


def train_regressor_agnostic(
    prepared_dirs: Sequence[str | Path],
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
    cache_size: int = 8,
) -> PoseRegressor:
    """Train one regressor on ``prepared_dirs`` and write it like a per-subject one."""
    folders = [Path(p) for p in prepared_dirs]
    if not folders:
        raise InputError("patient-agnostic training needs at least one training subject")
    check_same_detector(folders)
    drrs = SubjectDRRs(folders, settings, device, cache_size)

    def drr_for_step(generator: torch.Generator):
        return drrs[int(torch.randint(len(drrs), (), generator=generator))]

    model = run_regressor_training(drr_for_step, settings, seed, out, log_csv, device)
    fp_settings = {**regressor_settings(settings), "subject_seed": seed}
    snapshot = {**fp_settings, "training_subjects": [str(f) for f in folders]}
    write_json(snapshot, out.with_suffix(".config.json"))
    return model
