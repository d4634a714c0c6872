"""CDReg's training losses: the learned distance regressed to a convex function of the pose
distance, and the correlation-driven decomposition loss.

* Convex target: the distance estimates at a start pose are regressed to
  ``f(d) = s (sqrt(1 + (d / s)^2) - 1)`` of the SE(3) geodesic distance ``d`` (mm-like, the
  rotation at radius ``L``) of the start to the truth: 0 at the truth, convex and increasing,
  quadratic within ``s`` (``convex_scale_mm``) and linear beyond, so a gradient step on the
  learned distance moves towards the truth everywhere it is learned. (The paper regresses to a
  convex-shaped function of the geodesic distance; its exact form is not published.)
* Decomposition (CDDFuse's): ``CC(high_x, high_d)^2 / (CC(low_x, low_d) + 1.01)``: the two
  modalities' low-frequency features should correlate, their high-frequency ones not.
"""

from __future__ import annotations

import torch


def convex_target(d: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale (sqrt(1 + (d / scale)^2) - 1)``: the pseudo-Huber function of ``d``."""
    return scale * (torch.sqrt(1 + (d / scale) ** 2) - 1)


def convex_regression_loss(
    estimates: tuple[torch.Tensor, ...], d: torch.Tensor, scale: float
) -> torch.Tensor:
    """Mean over the heads and the batch of ``((estimate - f(d)) / scale)^2``."""
    target = convex_target(d.double(), scale)
    return torch.stack([(((e.double() - target) / scale) ** 2).mean() for e in estimates]).mean()


def correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of (N,C,H,W) maps over the pixels, averaged over images and
    channels (CDDFuse's ``cc``)."""
    a = a.flatten(2) - a.flatten(2).mean(-1, keepdim=True)
    b = b.flatten(2) - b.flatten(2).mean(-1, keepdim=True)
    cc = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return cc.mean()


def decomposition_loss(
    low_x: torch.Tensor, high_x: torch.Tensor, low_d: torch.Tensor, high_d: torch.Tensor
) -> torch.Tensor:
    """``CC(high_x, high_d)^2 / (CC(low_x, low_d) + 1.01)``."""
    return correlation(high_x, high_d) ** 2 / (correlation(low_x, low_d) + 1.01)
