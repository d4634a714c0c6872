"""SCR-reg's network: per pixel, the bone entry and exit points of its ray and their uncertainty.

Output layout (the authors' code): eight channels, entry ``xyz``, entry ``log sigma``, exit
``xyz``, exit ``log sigma``, coordinates in units of ``scale_mm`` (their code divides world
millimetres by 100) so that the network's outputs are of order one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from regbench.models.inputs import standardize
from regbench.models.unet import UNet

OUTPUT_CHANNELS = 8


@dataclass(frozen=True)
class SceneCoordinates:
    """One image's predictions split by surface: index 0 entry, 1 exit."""

    points_mm: torch.Tensor  # (N,2,H,W,3) world points
    log_std_mm: torch.Tensor  # (N,2,H,W) log of the isotropic standard deviation in mm


def split_outputs(raw: torch.Tensor, scale_mm: float) -> SceneCoordinates:
    """(N,8,H,W) network output -> points and log standard deviations in millimetres."""
    n, c, h, w = raw.shape
    if c != OUTPUT_CHANNELS:
        raise ValueError(f"expected {OUTPUT_CHANNELS} output channels, got {c}")
    parts = raw.reshape(n, 2, 4, h, w)
    points = parts[:, :, :3].permute(0, 1, 3, 4, 2) * scale_mm
    return SceneCoordinates(points, parts[:, :, 3] + math.log(scale_mm))


class SceneCoordinateNet(nn.Module):
    """(N,1,H,W) X-ray -> (N,8,H,W) scaled coordinates and log standard deviations.

    ``geometry`` is the detector the model was trained for (its pixels are the rays its
    coordinates lie on); registration solves PnP in it.
    """

    def __init__(
        self, base_channels: int, depth: int, scale_mm: float, geometry: dict | None = None
    ) -> None:
        super().__init__()
        self.unet = UNet(1, OUTPUT_CHANNELS, base_channels, depth)
        self.scale_mm = float(scale_mm)
        self.geometry = dict(geometry or {})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.unet(standardize(images))
