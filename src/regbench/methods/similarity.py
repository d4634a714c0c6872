"""The intensity similarities of the optimisation baselines: diffdrr's (multiscale) NCC."""

from __future__ import annotations

import torch
from diffdrr.metrics import (
    MultiscaleNormalizedCrossCorrelation2d,
    NormalizedCrossCorrelation2d,
)


class BorderedSimilarity(torch.nn.Module):
    """Compare two images inside a frame that drops ``border_px`` pixels on each side.

    The collimator border of an X-ray holds no anatomy; left in, its sharp edge pulls NCC towards
    a wrong magnification (DeepFluoro's preprocessing crops it for the same reason).
    """

    def __init__(self, metric: torch.nn.Module, border_px: int):
        super().__init__()
        self.metric = metric
        self.border_px = int(border_px)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = self.border_px
        if b > 0:
            x1, x2 = x1[..., b:-b, b:-b], x2[..., b:-b, b:-b]
        return self.metric(x1, x2)


def multiscale_ncc(patch_size: int, border_px: int = 0) -> BorderedSimilarity:
    """DiffPose's objective: global NCC and local NCC on ``patch_size`` patches, 0.5/0.5."""
    metric = MultiscaleNormalizedCrossCorrelation2d([None, patch_size], [0.5, 0.5])
    return BorderedSimilarity(metric, border_px)


def zncc(border_px: int = 0) -> BorderedSimilarity:
    """PSSS-reg's objective: the zero-normalised cross-correlation of the whole images. The
    authors' ZNCC instance-normalises both images (biased variance, eps 1e-5) and averages
    their product, which is diffdrr's global NCC; their loss is ``1 - ZNCC``."""
    return BorderedSimilarity(NormalizedCrossCorrelation2d(), border_px)
