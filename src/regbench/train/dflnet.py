"""Per-subject training of DFLNet's landmark heatmap network on DRRs rendered on the fly.

Each step draws poses like the regressor's (the clinical prior widened by ``prior_scale``),
renders augmented training X-rays at them and labels each with the subject's landmarks
projected at its known pose (:func:`regbench.models.landmark_net.landmark_labels`). The loss
is the authors' heatmap NCC loss; the optimiser is AdamW with a cosine decay like the
regressor's (the authors' SGD with Nesterov momentum at 0.1 and a plateau schedule is tuned
for hundreds of epochs, not for the CPU budget's few hundred steps).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.errors import InputError
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.landmark_net import HeatmapNet, heatmap_loss, landmark_labels
from regbench.train.checkpoint import TrainingState, load_trained
from regbench.train.xray_domain import TrainingXrays

log = logging.getLogger(__name__)


def dflnet_settings(settings: dict) -> dict:
    """The part of the config the model depends on (its checkpoint fingerprint)."""
    keys = ("seed", "prior", "render", "geometry", "augment")
    return {**{k: settings[k] for k in keys}, "training": settings["dflnet"]["training"]}


def train_dflnet(
    prepared: Prepared,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> HeatmapNet:
    """Train and write ``out``, ``log_csv`` and a config snapshot beside them; resumable from
    ``out.with_suffix('.partial')`` every ``checkpoint_every`` steps."""
    cfg = settings["dflnet"]["training"]
    points, geometry = prepared.points, prepared.geometry
    if len(points) == 0:
        raise InputError("dflnet: the subject has no landmarks to detect")
    fp_settings = {**dflnet_settings(settings), "subject_seed": seed}
    prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])
    xrays = TrainingXrays(prepared, settings, device)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = HeatmapNet(points, geometry, cfg["base_channels"], cfg["depth"]).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)

    def step_loss() -> torch.Tensor:
        poses = carm_pose(*prior.sample_params(cfg["batch_size"], generator))
        images = xrays.sample(poses, generator)
        target, visible = landmark_labels(poses.numpy(), points, geometry, cfg["sigma_px"])
        return heatmap_loss(model(images.to(device)), target.to(device), visible.to(device))

    state.run(step_loss, cfg, out, log, "dflnet")
    extra = {"points": points.tolist(), "geometry": dict(geometry), "steps": cfg["steps"]}
    state.finish(out, log_csv, extra)
    return model


def load_dflnet(path: str | Path, settings: dict, device: torch.device) -> HeatmapNet:
    """Load a trained model; refused when it was trained under other settings."""
    blob = load_trained(path, dflnet_settings(settings), "dflnet model")
    cfg = settings["dflnet"]["training"]
    model = HeatmapNet(blob["points"], blob["geometry"], cfg["base_channels"], cfg["depth"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
