"""Per-subject training of SCR-reg's scene-coordinate network on DRRs rendered on the fly.

Each training X-ray comes with its labels from the same rays and samples
(:class:`~regbench.rendering.scene_coordinates.BoneEntryExit` on the projector that renders it),
so a label is exactly the point on its pixel's ray. The loss is the authors' code's
heteroscedastic Gaussian likelihood (:func:`heteroscedastic_loss`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.scene_coordinates import SceneCoordinateNet
from regbench.rendering.scene_coordinates import BoneEntryExit
from regbench.train.checkpoint import TrainingState, load_trained, own_model_settings
from regbench.train.xray_domain import TrainingXrays

log = logging.getLogger(__name__)

METHOD = "scr-reg"


def heteroscedastic_loss(
    raw: torch.Tensor, labels_mm: torch.Tensor, scale_mm: float
) -> torch.Tensor:
    """The authors' loss: (N,8,H,W) outputs, (N,2,H,W,3) entry/exit labels in mm (NaN: the
    ray meets no bone).

    Per surface, over the pixels with a label, the mean of ``|mu - y|^2 / sigma^2 + 2 log sigma``
    (the negative log-likelihood of an isotropic Gaussian up to its weighting; coordinates
    in units of ``scale_mm``); over the pixels without one, a term that drives sigma up, so
    that their predictions are never selected: the mean of ``exp(-sigma)`` for the entry and
    ``exp(-sigma)^2`` for the exit, as in the authors' code. The four means are summed.
    """
    n, _, h, w = raw.shape
    parts = raw.reshape(n, 2, 4, h, w)
    mean = parts[:, :, :3].permute(0, 1, 3, 4, 2)  # (N,2,H,W,3)
    log_std = parts[:, :, 3]  # (N,2,H,W)
    target = labels_mm / scale_mm
    labelled = torch.isfinite(target).all(dim=-1)
    total = raw.new_zeros(())
    for surface, power in ((0, 1), (1, 2)):
        pos, s = labelled[:, surface], log_std[:, surface]
        if pos.any():
            d2 = ((mean[:, surface][pos] - target[:, surface][pos]) ** 2).sum(-1)
            total = total + (d2 * torch.exp(-2 * s[pos]) + 2 * s[pos]).mean()
        if (~pos).any():
            total = total + torch.exp(-torch.exp(s[~pos])).pow(power).mean()
    return total


class SceneCoordinateXrays:
    """Augmented training X-rays and their scene-coordinate labels, from the same rays."""

    def __init__(
        self, prepared: Prepared, settings: dict, threshold_hu: float, device: torch.device
    ) -> None:
        self.xrays = TrainingXrays(prepared, settings, device)
        self.labels = BoneEntryExit(
            self.xrays.projector, prepared.ct, prepared.affine, threshold_hu
        )

    def render(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,4,4) poses -> their rendered parts (N,2,H,W) (an X-ray once
        ``self.xrays.degrade``-d) and entry/exit labels (N,2,H,W,3) in mm."""
        parts = self.xrays.parts(poses)
        # The projector renders in its volume's dtype: label the rays of the pose it used.
        rendered = poses.to(self.xrays.volume.dtype).to(torch.float64)
        return parts, self.labels(rendered, self.xrays.n_points)


class ReplayPool:
    """Rendered training poses, each served to about ``reuse`` steps, every time with a bone
    contrast and degradations of its own.

    Rendering a DRR and labelling its rays cost about two thirds of a step of the small U-Net
    on the CPU; a pool of ``batch_size * reuse`` rendered poses, of which each step replaces
    the oldest ``batch_size / reuse`` (on average) and draws its batch without replacement,
    makes a step that much cheaper. ``reuse = 1`` renders every image afresh.
    """

    def __init__(
        self,
        data: SceneCoordinateXrays,
        draw_poses: Callable[[int], torch.Tensor],
        batch_size: int,
        reuse: int,
        generator: torch.Generator,
    ) -> None:
        self.data, self.draw_poses, self.generator = data, draw_poses, generator
        self.batch_size, self.reuse = int(batch_size), int(reuse)
        self.parts, self.labels = data.render(draw_poses(self.batch_size * self.reuse))
        self.steps = 0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next step's (B,1,H,W) X-rays and (B,2,H,W,3) labels."""
        replaced = self.steps * self.batch_size // self.reuse  # so far; the oldest is next
        fresh = (self.steps + 1) * self.batch_size // self.reuse - replaced
        self.steps += 1
        if fresh:
            slots = (replaced + torch.arange(fresh)) % len(self.parts)
            self.parts[slots], self.labels[slots] = self.data.render(self.draw_poses(fresh))
        chosen = torch.randperm(len(self.parts), generator=self.generator)[: self.batch_size]
        images = self.data.xrays.degrade(self.parts[chosen], self.generator)[0]
        return images, self.labels[chosen]


def train_scr_reg(
    prepared: Prepared,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> SceneCoordinateNet:
    """Train and write ``out`` (checkpoint), ``log_csv`` and a config snapshot beside them;
    resumable from ``out.with_suffix('.partial')`` like the regressor's training."""
    cfg = settings[METHOD]["training"]
    fp_settings = {**own_model_settings(settings, METHOD), "subject_seed": seed}
    data = SceneCoordinateXrays(prepared, settings, cfg["bone_threshold_hu"], device)
    prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SceneCoordinateNet(
        cfg["base_channels"], cfg["depth"], cfg["scale_mm"], prepared.geometry
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)

    pool = ReplayPool(
        data,
        lambda n: carm_pose(*prior.sample_params(n, generator)),
        cfg["batch_size"],
        cfg["reuse"],
        generator,
    )

    def step_loss() -> torch.Tensor:
        images, labels = pool.sample()
        return heteroscedastic_loss(model(images.to(device)), labels.to(device), model.scale_mm)

    state.run(step_loss, cfg, out, log, METHOD)
    extra = {
        "base_channels": cfg["base_channels"],
        "depth": cfg["depth"],
        "scale_mm": cfg["scale_mm"],
        "geometry": dict(prepared.geometry),
    }
    state.finish(out, log_csv, extra)
    return model


def load_scr_reg(path: str | Path, settings: dict, device: torch.device) -> SceneCoordinateNet:
    """Load a trained model; its fingerprint must match the current settings."""
    blob = load_trained(path, own_model_settings(settings, METHOD), f"{METHOD} model")
    model = SceneCoordinateNet(
        blob["base_channels"], blob["depth"], blob["scale_mm"], blob["geometry"]
    )
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
