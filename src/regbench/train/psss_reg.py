"""Per-subject, self-supervised training of PSSS-reg's network on the patient's own DRRs.

Self-supervised: every training X-ray is rendered from the patient's CT at a pose drawn here,
so the pose is its label (no annotation). The loss is the authors' pose loss
(:func:`pose_loss`) plus the autoencoder's reconstruction term (:func:`reconstruction_loss`)
weighted by ``reconstruction_weight``. The paper's incremental learning widens the range of the
training poses as training goes on (:func:`curriculum_fraction`): the first stage sees poses
near the prior's mean, the last the whole training range (the clinical prior widened by
``prior_scale``). Training X-rays, optimiser and schedule are the regressor's (AdamW, cosine
decay), resumable and fingerprinted through :class:`~regbench.train.checkpoint.TrainingState`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.psss_net import NetShape, PSSSNet
from regbench.train.checkpoint import TrainingState, load_trained, own_model_settings
from regbench.train.xray_domain import TrainingXrays

log = logging.getLogger(__name__)

METHOD = "psss-reg"


def net_shape(cfg: dict) -> NetShape:
    return NetShape(cfg["base_channels"], cfg["depth"], cfg["grid"], cfg["heads"])


def curriculum_fraction(step: int, steps: int, stages: int, start: float) -> float:
    """Share of the full training range at ``step`` (0-based) of ``steps``: ``stages`` equal
    stages, the first at ``start``, the last at 1, evenly spaced between."""
    if stages <= 1:
        return 1.0
    stage = min(stages - 1, step * stages // steps)
    return start + (1.0 - start) * stage / (stages - 1)


def curriculum_prior(prior_cfg: dict, cfg: dict, step: int) -> PosePrior:
    """The training poses' distribution at ``step``: the clinical prior's mean, its spreads
    widened by ``prior_scale`` times the curriculum's fraction."""
    fraction = curriculum_fraction(
        step, cfg["steps"], cfg["curriculum_stages"], cfg["curriculum_start"]
    )
    return PosePrior.from_config(prior_cfg, scale=cfg["prior_scale"] * fraction)


def pose_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' pose loss on (N,6) parameters: the batch mean of the Euclidean norm of the
    rotation error plus that of the translation error (here in units of the prior's spread)."""
    rotation = torch.linalg.vector_norm(pred[:, :3] - target[:, :3], dim=-1)
    translation = torch.linalg.vector_norm(pred[:, 3:] - target[:, 3:], dim=-1)
    return (rotation + translation).mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the decoder's image against the standardised input."""
    return torch.nn.functional.mse_loss(reconstruction, target)


def train_psss_reg(
    prepared: Prepared,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> PSSSNet:
    """Train and write ``out`` (checkpoint), ``log_csv`` and a config snapshot beside them;
    resumable from ``out.with_suffix('.partial')`` like the regressor's training."""
    cfg = settings[METHOD]["training"]
    fp_settings = {**own_model_settings(settings, METHOD), "subject_seed": seed}
    xrays = TrainingXrays(prepared, settings, device)
    clinical = PosePrior.from_config(settings["prior"])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = PSSSNet(net_shape(cfg), clinical, prepared.geometry).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)

    def step_loss() -> torch.Tensor:
        prior = curriculum_prior(settings["prior"], cfg, state.step)
        rot, trans = prior.sample_params(cfg["batch_size"], generator)
        images = xrays.sample(carm_pose(rot, trans), generator)
        output = model(images.to(device))
        loss = pose_loss(output.params, model.normalise(rot, trans).to(device))
        return loss + cfg["reconstruction_weight"] * reconstruction_loss(
            output.reconstruction, output.target
        )

    state.run(step_loss, cfg, out, log, METHOD)
    extra = {"geometry": dict(prepared.geometry), "steps": cfg["steps"]}
    state.finish(out, log_csv, extra)
    return model


def load_psss_reg(path: str | Path, settings: dict, device: torch.device) -> PSSSNet:
    """Load a trained model; refused when it was trained under other settings."""
    blob = load_trained(path, own_model_settings(settings, METHOD), f"{METHOD} model")
    cfg = settings[METHOD]["training"]
    model = PSSSNet(net_shape(cfg), PosePrior.from_config(settings["prior"]), blob["geometry"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
