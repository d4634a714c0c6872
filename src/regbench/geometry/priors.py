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
