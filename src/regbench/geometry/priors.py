"""Pose priors: where a clinical C-arm is likely to be, in the C-arm parameterization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from regbench.geometry.poses import carm_pose


@dataclass(frozen=True)
class PosePrior:
    """Independent Gaussians on ZXY angles (deg) and source offsets (mm) around a mean view."""

    rotation_deg_mean: tuple[float, float, float]
    rotation_deg_std: tuple[float, float, float]
    translation_mm_mean: tuple[float, float, float]
    translation_mm_std: tuple[float, float, float]

    @classmethod
    def from_config(cls, cfg: dict, scale: float = 1.0) -> PosePrior:
        """Build from a config ``prior`` block; ``scale`` widens the spreads (training priors)."""
        return cls(
            tuple(cfg["rotation_deg_mean"]),
            tuple(s * scale for s in cfg["rotation_deg_std"]),
            tuple(cfg["translation_mm_mean"]),
            tuple(s * scale for s in cfg["translation_mm_std"]),
        )

    def mean_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        rot = torch.tensor(self.rotation_deg_mean, dtype=torch.float64) * math.pi / 180
        return rot, torch.tensor(self.translation_mm_mean, dtype=torch.float64)

    def std_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        rot = torch.tensor(self.rotation_deg_std, dtype=torch.float64) * math.pi / 180
        return rot, torch.tensor(self.translation_mm_std, dtype=torch.float64)

    def sample_params(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,3) angles in rad and (n,3) offsets in mm, float64."""
        rot_mean, trans_mean = self.mean_params()
        rot_std, trans_std = self.std_params()
        z = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        return rot_mean + z[:, :3] * rot_std, trans_mean + z[:, 3:] * trans_std

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,4,4) float64 poses."""
        return carm_pose(*self.sample_params(n, generator))

    def mean_pose(self) -> torch.Tensor:
        rot, trans = self.mean_params()
        return carm_pose(rot[None], trans[None])[0]


def wrap_deg(angle: torch.Tensor) -> torch.Tensor:
    """Angles (deg) to [-180, 180): an angle near 180 is close to one near -180."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def prior_zscores(prior: PosePrior, poses: torch.Tensor) -> torch.Tensor:
    """(N,4,4) poses -> (N,6) z-scores of their C-arm parameters under ``prior``.

    Why: a ground-truth pose far outside the prior means the regressor never saw such a view
    (a wrong convention, or a prior that does not fit the data). Angles are compared modulo 360.
    """
    from regbench.geometry.poses import carm_params

    rot, trans = carm_params(poses.double())
    rot_mean, trans_mean = prior.mean_params()
    rot_std, trans_std = prior.std_params()
    drot = wrap_deg(torch.rad2deg(rot - rot_mean))
    z_rot = drot / torch.rad2deg(rot_std).clamp_min(1e-9)
    z_trans = (trans - trans_mean) / trans_std.clamp_min(1e-9)
    return torch.cat([z_rot, z_trans], dim=-1)
