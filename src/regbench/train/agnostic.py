"""Patient-agnostic training: one pose regressor, or one learned similarity per variant, for
several training subjects.

The loops are the per-subject ones (:func:`regbench.train.regressor.run_regressor_training`,
:func:`regbench.train.similarity.run_similarity_training`), except that every step uses one
training subject drawn uniformly (with the run's generator, so a rerun draws the same
sequence). Subjects are loaded on demand and the most recent ``cache_size`` are kept, so training
sets larger than memory work. Checkpoints have the same fingerprint keys as per-subject ones, so
``register`` loads them as usual; the training subjects are recorded in the config snapshot.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from regbench.data.subject import Prepared, load_prepared, read_geometry
from regbench.errors import InputError
from regbench.io import write_json
from regbench.models.regressor import PoseRegressor
from regbench.models.similarity import SimilarityGeometry, SimilarityModel
from regbench.train.regressor import regressor_settings, run_regressor_training
from regbench.train.similarity import run_similarity_training, similarity_settings
from regbench.train.xray_domain import TrainingXrays

log = logging.getLogger(__name__)


class SubjectCache:
    """Per-subject objects (training X-ray renderers, similarity geometries) of prepared subject folders,
    built by ``build(prepared)`` on first use; at most ``size`` are kept."""

    def __init__(self, folders: Sequence[Path], build: Callable[[Prepared], object], size: int):
        self.folders, self.build = list(folders), build
        self.size = max(1, size)
        self._cache: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int):
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        self._cache[i] = self.build(load_prepared(self.folders[i]))
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return self._cache[i]

    def draw(self, generator: torch.Generator):
        """One subject drawn uniformly with ``generator`` (a rerun draws the same sequence)."""
        return self[int(torch.randint(len(self), (), generator=generator))]


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
    folders = _training_folders(prepared_dirs)
    xrays = SubjectCache(
        folders, lambda prepared: TrainingXrays(prepared, settings, device), cache_size
    )
    model = run_regressor_training(xrays.draw, settings, seed, out, log_csv, device)
    _snapshot_with_subjects(regressor_settings(settings), seed, folders, out)
    return model


def train_similarity_agnostic(
    prepared_dirs: Sequence[str | Path],
    variant: str,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
    regressor: PoseRegressor,
    cache_size: int = 8,
) -> SimilarityModel:
    """Train one learned similarity on ``prepared_dirs`` (each step on one subject drawn
    uniformly) and write it like a per-subject one, the training subjects in its snapshot;
    ``regressor`` (the agnostic initialiser) gives the training starts."""
    folders = _training_folders(prepared_dirs)
    setups = SubjectCache(
        folders, lambda prepared: SimilarityGeometry(prepared, settings, device), cache_size
    )
    model = run_similarity_training(
        setups.draw, variant, settings, seed, out, log_csv, device, regressor
    )
    _snapshot_with_subjects(similarity_settings(settings, variant), seed, folders, out)
    return model


def _snapshot_with_subjects(model_settings: dict, seed: int, folders: list[Path], out: Path):
    """The config snapshot beside ``out``, with the training subjects recorded."""
    snapshot = {
        **model_settings,
        "subject_seed": seed,
        "training_subjects": [str(f) for f in folders],
    }
    write_json(snapshot, out.with_suffix(".config.json"))


def _training_folders(prepared_dirs: Sequence[str | Path]) -> list[Path]:
    folders = [Path(p) for p in prepared_dirs]
    if not folders:
        raise InputError("patient-agnostic training needs at least one training subject")
    check_same_detector(folders)
    return folders
