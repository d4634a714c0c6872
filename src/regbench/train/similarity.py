"""Per-subject training of a learned similarity by gradient matching (ProST's idea).

For a ground-truth pose T_gt and a start pose T near it, the pose gradient of the learned
distance, g = ds/dxi at xi = 0 (T(xi) = T @ exp(xi)), is pushed to point like the gradient of
the true pose distance g* = d(1/2 d(T(xi), T_gt)^2)/dxi (se(3) or SO(4) distance): only the
directions of the rotational and translational parts are matched, so descending the learned
similarity moves the pose towards T_gt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from regbench.errors import InputError
from regbench.geometry.poses import carm_params, carm_pose, invert, perturb
from regbench.geometry.priors import PosePrior
from regbench.geometry.so4 import target_gradient
from regbench.models.similarity import SimilarityGeometry, SimilarityModel
from regbench.models.variants import VARIANTS
from regbench.render import Prepared, render
from regbench.train.augment import augment
from regbench.train.checkpoint import TrainingState, load_checkpoint

log = logging.getLogger(__name__)


def similarity_settings(settings: dict, variant: str) -> dict:
    """The part of the config a similarity model depends on (its checkpoint fingerprint)."""
    keys = ("seed", "prior", "render", "similarity", "geometry")
    return {**{k: settings[k] for k in keys}, "variant": variant}


def build_similarity_model(variant: str, cfg: dict) -> SimilarityModel:
    """An untrained model of ``variant`` with the config's ``similarity`` sizes."""
    return SimilarityModel(
        VARIANTS[variant],
        cfg["channels"],
        cfg["embed_dim"],
        cfg["encoder"],
        cfg["pooled_size"],
        cfg["crop_px"],
    )


def direction_loss(g: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over the batch of |u(g_rot) - u(g*_rot)|^2 + |u(g_trans) - u(g*_trans)|^2."""
    loss = 0.0
    for part in (slice(0, 3), slice(3, 6)):
        a, b = g[:, part], target[:, part]
        a = a / (a.norm(dim=-1, keepdim=True) + eps)
        b = b / (b.norm(dim=-1, keepdim=True) + eps)
        loss = loss + ((a - b) ** 2).sum(dim=-1)
    return loss.mean()


def sample_start(pose_gt: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Start poses within the capture range, drawn like the regressor's errors: Gaussian in
    the C-arm parameterization (angles about the isocentre, source offset) around the truth."""
    rot, trans = carm_params(pose_gt)
    z = torch.randn(len(pose_gt), 6, generator=generator, dtype=torch.float64)
    rot = rot + z[:, :3] * math.radians(cfg["start_rotation_deg"])
    trans = trans + z[:, 3:] * cfg["start_translation_mm"]
    return carm_pose(rot, trans)


def matching_loss(
    model: SimilarityModel,
    setup: SimilarityGeometry,
    features: torch.Tensor,
    xrays: torch.Tensor,
    start: torch.Tensor,
    pose_gt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-matching loss and the learned distances at the start poses.

    Increments act in a frame at the isocentre (the start camera's axes, moved to the world
    origin), so rotation and translation parts of the gradients are not coupled by the
    source-isocentre lever arm; the target distance compares the same frames of both poses.
    """
    centre = torch.eye(4, dtype=start.dtype).repeat(len(start), 1, 1)
    centre[:, :3, 3] = invert(start)[:, :3, 3]  # the world origin in each start camera's frame
    start_c, gt_c = start @ centre, pose_gt @ centre
    xi = torch.zeros(len(start), 6, dtype=torch.float64, requires_grad=True)
    e_x = model.embed_xray(xrays)
    moved = perturb(start_c, xi) @ invert(centre)
    e_d = model.embed_drr(setup.projector, features, moved, setup.n_points)
    distance = model.distance(e_x, e_d)
    (g,) = torch.autograd.grad(distance.sum(), xi, create_graph=True)
    target = target_gradient(start_c, gt_c, setup.characteristic_length, model.variant.target)
    return direction_loss(g, target.to(g.dtype)), distance.detach()


def train_similarity(
    prepared: Prepared,
    variant: str,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> SimilarityModel:
    """Train one variant on one subject and write ``out``, ``log_csv`` and a config snapshot."""
    setup = SimilarityGeometry(prepared, settings, device)
    return run_similarity_training(
        lambda generator: setup, variant, settings, seed, out, log_csv, device
    )


def run_similarity_training(
    setup_for_step: Callable[[torch.Generator], SimilarityGeometry],
    variant: str,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> SimilarityModel:
    """The gradient-matching loop; ``setup_for_step(generator)`` is the subject of a step (the
    one subject, or one drawn per step with the run's generator when patient-agnostic)."""
    cfg = settings["similarity"]
    fp_settings = {**similarity_settings(settings, variant), "subject_seed": seed}
    train_prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_similarity_model(variant, cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)
    partial = out.with_suffix(".partial")
    t0 = time.perf_counter() - state.resume(partial, log)
    model.train()
    for _ in tqdm(range(state.step, cfg["steps"]), desc=variant, mininterval=5):
        setup = setup_for_step(generator)
        pose_gt = carm_pose(*train_prior.sample_params(cfg["batch_size"], generator))
        with torch.no_grad():
            xrays = augment(render(setup.xray_drr, pose_gt, setup.n_points).cpu(), generator)
        start = sample_start(pose_gt, cfg, generator)
        features = model.features(setup.density)
        loss, _ = matching_loss(model, setup, features, xrays.to(device), start, pose_gt)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        seconds = time.perf_counter() - t0
        if state.end_step(loss.item(), seconds, cfg["checkpoint_every"], cfg["steps"], partial):
            log.info("%s step %d loss %.4f", variant, state.step, loss.item())
    state.finish(out, log_csv, {"variant": variant})
    return model


def load_similarity(path: str | Path, variant: str, settings: dict, device) -> SimilarityModel:
    """Load a trained similarity model; refuse one trained for other settings or variant."""
    blob = load_checkpoint(path)
    got = {k: v for k, v in blob["settings"].items() if k != "subject_seed"}
    if got != similarity_settings(settings, variant):
        raise InputError(f"similarity model {path} was trained with other settings or variant")
    model = build_similarity_model(variant, settings["similarity"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
