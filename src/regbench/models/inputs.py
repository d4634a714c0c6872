"""How images enter the networks."""

from __future__ import annotations

import torch


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per image: intensities of X-rays and DRRs are not comparable."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + eps)
