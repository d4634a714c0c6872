"""Per-subject training of the pose regressor on DRRs rendered on the fly."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.regressor import PoseRegressor
from regbench.train.checkpoint import TrainingState, load_trained
from regbench.train.xray_domain import TrainingXrays

log = logging.getLogger(__name__)


def regressor_settings(settings: dict) -> dict:
    """The part of the config a regressor depends on (its checkpoint fingerprint)."""
    keys = ("seed", "prior", "render", "regressor", "geometry", "augment")
    return {k: settings[k] for k in keys}


def train_regressor(
    prepared: Prepared,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> PoseRegressor:
    """Train and write ``out`` (checkpoint), ``log_csv`` and a config snapshot beside them.

    A resumable state is kept in ``out.with_suffix('.partial')`` every ``checkpoint_every``
    steps; a rerun after a crash continues from it and ends with the same weights.
    """
    xrays = TrainingXrays(prepared, settings, device)
    return run_regressor_training(lambda generator: xrays, settings, seed, out, log_csv, device)


def run_regressor_training(
    xrays_for_step: Callable[[torch.Generator], TrainingXrays],
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> PoseRegressor:
    """The training loop of every regressor; ``xrays_for_step(generator)`` gives the training
    X-ray renderer of each step (one subject, or a subject drawn from the training set with the
    run's generator, before the step's poses)."""
    cfg = settings["regressor"]
    fp_settings = {**regressor_settings(settings), "subject_seed": seed}
    clinical = PosePrior.from_config(settings["prior"])
    train_prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = PoseRegressor(cfg["backbone"], clinical).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)

    def step_loss() -> torch.Tensor:
        xrays = xrays_for_step(generator)
        rot, trans = train_prior.sample_params(cfg["batch_size"], generator)
        images = xrays.sample(carm_pose(rot, trans), generator)
        target = model.normalise(rot, trans).to(device)
        return torch.nn.functional.mse_loss(model(images.to(device)), target)

    state.run(step_loss, cfg, out, log, "regressor")
    state.finish(out, log_csv, {"backbone": cfg["backbone"], "steps": cfg["steps"]})
    return model


def load_regressor(path: str | Path, settings: dict, device: torch.device) -> PoseRegressor:
    """Load a trained regressor; its fingerprint must match the current settings."""
    blob = load_trained(path, regressor_settings(settings), "regressor")
    model = PoseRegressor(blob["backbone"], PosePrior.from_config(settings["prior"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
