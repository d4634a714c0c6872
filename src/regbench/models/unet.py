"""A small U-Net: the dense predictor of the landmark and scene-coordinate methods.

DFLNet (Grupp et al. 2020) predicts one heatmap per landmark with a U-Net, SCR-reg (Shrestha
et al. 2023) per-pixel 3D coordinates and their uncertainty with one; both keep the input
resolution at the output, which is what the skip connections are for. Sized for the CPU
budget by ``base_channels`` and ``depth``; the paper-scale configs widen it.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions (the first with ``stride``), each with group norm and ReLU
    (batch-size independent)."""
    groups = min(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(N,C_in,H,W) -> (N,C_out,H,W); H and W must be divisible by 2**depth."""

    def __init__(
        self, in_channels: int, out_channels: int, base_channels: int = 16, depth: int = 3
    ):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList(
            [conv_block(in_channels, widths[0])]
            + [conv_block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)]
        )
        self.merge = nn.ModuleList([conv_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"image {h}x{w} is not divisible by 2**depth = {2**self.depth}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)
