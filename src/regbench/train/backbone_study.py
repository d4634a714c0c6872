"""The paper's Figure 4 (left): pose regressors with different timm backbones on one subject,
compared by training time and the mTRE of their PoseNet estimates.

The paper stops each training when the standard deviation of its loss over the last ten
epochs falls below 1e-4 and reports the time at that point. Epochs need a fixed training set,
so every backbone trains on the same pool of augmented DRRs, rendered once from the subject
(the per-subject regressor instead renders new DRRs every step); an epoch is one pass over the
pool. A training that reaches the step cap first is reported as not settled, with its time at
the cap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from regbench.errors import InputError
from regbench.evaluate import mtre
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.regressor import PoseRegressor
from regbench.train.xray_domain import TrainingXrays

if TYPE_CHECKING:
    from regbench.data.subject import Prepared
    from regbench.data.xrays import XraySet

log = logging.getLogger(__name__)
RENDER_CHUNK = 32  # DRRs rendered per call while building the pool


@dataclass(frozen=True)
class Pool:
    """Augmented training DRRs and their normalisable C-arm parameters."""

    images: torch.Tensor  # (N,1,H,W)
    rotation: torch.Tensor  # (N,3) rad
    translation: torch.Tensor  # (N,3) mm


@dataclass(frozen=True)
class BackboneResult:
    backbone: str
    parameters_m: float  # millions of trainable parameters
    epochs: int
    steps: int
    settled: bool  # the loss criterion was met before the step cap
    loss_std: float  # std of the epoch losses over the last `window` epochs (nan: fewer)
    train_seconds: float
    mtre_median_mm: float
    mtre_mean_mm: float


def loss_std(epoch_losses: list[float], window: int) -> float:
    """The criterion's statistic: std of the last ``window`` epoch losses (nan if fewer)."""
    if len(epoch_losses) < window:
        return float("nan")
    return float(np.std(epoch_losses[-window:]))


def render_pool(prepared: Prepared, settings: dict, seed: int, device: torch.device) -> Pool:
    """The training pool: ``backbone_study.pool_size`` DRRs at poses from the training prior
    (the regressor's), augmented as the regressor's training images are."""
    size = int(settings["backbone_study"]["pool_size"])
    prior = PosePrior.from_config(settings["prior"], scale=settings["regressor"]["prior_scale"])
    generator = torch.Generator().manual_seed(seed)
    rotation, translation = prior.sample_params(size, generator)
    xrays = TrainingXrays(prepared, settings, device)
    poses = carm_pose(rotation, translation)
    images = torch.cat(
        [xrays.sample(poses[i : i + RENDER_CHUNK], generator) for i in range(0, size, RENDER_CHUNK)]
    )
    return Pool(images, rotation, translation)


def train_backbone(
    backbone: str, pool: Pool, settings: dict, seed: int, device: torch.device
) -> tuple[PoseRegressor, dict]:
    """Train one backbone on ``pool`` until the loss criterion or the step cap."""
    study, reg = settings["backbone_study"], settings["regressor"]
    window, threshold = int(study["window_epochs"]), float(study["loss_std_threshold"])
    batch, max_steps = int(study["batch_size"]), int(study["max_steps"])
    if batch > len(pool.images):
        raise InputError(
            f"config key 'backbone_study.batch_size' ({batch}) exceeds the pool "
            f"({len(pool.images)} DRRs, backbone_study.pool_size): an epoch would have no step"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = PoseRegressor(backbone, PosePrior.from_config(settings["prior"])).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=reg["lr"], weight_decay=reg["weight_decay"]
    )
    targets = model.normalise(pool.rotation, pool.translation)
    n = len(pool.images)
    epoch_losses: list[float] = []
    steps, seconds, settled = 0, 0.0, False
    model.train()
    progress = tqdm(total=max_steps, desc=backbone, mininterval=5)
    while steps < max_steps and not settled:
        order = torch.randperm(n, generator=generator)
        losses = []
        t0 = time.perf_counter()
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            prediction = model(pool.images[idx].to(device))
            loss = torch.nn.functional.mse_loss(prediction, targets[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
            progress.update()
            if steps >= max_steps:
                break
        seconds += time.perf_counter() - t0
        epoch_losses.append(float(np.mean(losses)))
        settled = loss_std(epoch_losses, window) < threshold
        log.info("%s epoch %d loss %.5f", backbone, len(epoch_losses), epoch_losses[-1])
    progress.close()
    return model.eval(), {
        "epochs": len(epoch_losses),
        "steps": steps,
        "settled": settled,
        "loss_std": loss_std(epoch_losses, window),
        "train_seconds": seconds,
    }


def study_backbones(
    prepared: Prepared, test: XraySet, settings: dict, seed: int, device: torch.device
) -> pd.DataFrame:
    """One row per backbone of ``backbone_study.backbones``: training, then PoseNet mTRE on the
    subject's test X-rays (the regressor's estimate, unrefined)."""
    pool = render_pool(prepared, settings, seed, device)
    rows = []
    for backbone in settings["backbone_study"]["backbones"]:
        model, training = train_backbone(backbone, pool, settings, seed, device)
        estimates = model.predict(test.images.to(device)).cpu().numpy()
        errors = mtre(estimates, test.poses.numpy(), prepared.points)
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        result = BackboneResult(
            backbone=backbone,
            parameters_m=parameters,
            mtre_median_mm=float(np.median(errors)),
            mtre_mean_mm=float(np.mean(errors)),
            **training,
        )
        log.info("%s", result)
        rows.append(asdict(result))
    return pd.DataFrame(rows)
