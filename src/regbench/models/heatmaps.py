"""Landmark heatmaps: training labels from projected landmarks, and their confident peaks.

DFLNet (Grupp et al. 2020) regresses one heatmap per landmark and keeps a landmark only where
its heatmap peaks confidently. Pixel coordinates are those of
:func:`~regbench.geometry.projection.project_points` (origin at the image's upper-left corner),
so pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)`` and its centre is
``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import torch


def pixel_centres(height: int, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(H,W,2) ``(u, v)`` coordinates of the pixel centres."""
    v = torch.arange(height, dtype=dtype) + 0.5
    u = torch.arange(width, dtype=dtype) + 0.5
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


def gaussian_heatmaps(
    pixels: torch.Tensor, height: int, width: int, sigma_px: float
) -> torch.Tensor:
    """(N,K,2) landmark pixels -> (N,K,H,W) unit-peak Gaussians centred on them; a landmark
    given as NaN (off the detector, or unknown) gets an all-zero map."""
    centres = pixel_centres(height, width, pixels.dtype)  # (H,W,2)
    d2 = ((centres[None, None] - pixels[:, :, None, None, :]) ** 2).sum(-1)
    maps = torch.exp(-d2 / (2.0 * sigma_px**2))
    return torch.nan_to_num(maps, nan=0.0)


def heatmap_peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,K,H,W) heatmaps -> (N,K,2) sub-pixel peak coordinates and (N,K) peak heights.

    The arg-max pixel, refined along each axis by the vertex of the parabola through the log
    intensities of it and its two neighbours: exact for a Gaussian blob (the labels), the
    usual sub-pixel estimate for a predicted map. A peak on the border stays at its pixel
    centre along that axis.
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    height, index = flat.max(dim=-1)
    row, col = index // w, index % w
    log = heatmaps.clamp_min(1e-30).log()
    batch = torch.arange(n)[:, None]
    landmark = torch.arange(k)[None, :]

    def vertex(centre, before, after, inside):
        curvature = before - 2 * centre + after
        step = (
            0.5
            * (before - after)
            / torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
        )
        return torch.where(inside & (curvature < 0), step.clamp(-0.5, 0.5), torch.zeros_like(step))

    centre = log[batch, landmark, row, col]
    inside_v = (row > 0) & (row < h - 1)
    inside_u = (col > 0) & (col < w - 1)
    up = log[batch, landmark, (row - 1).clamp_min(0), col]
    down = log[batch, landmark, (row + 1).clamp_max(h - 1), col]
    left = log[batch, landmark, row, (col - 1).clamp_min(0)]
    right = log[batch, landmark, row, (col + 1).clamp_max(w - 1)]
    v = row.to(log) + 0.5 + vertex(centre, up, down, inside_v)
    u = col.to(log) + 0.5 + vertex(centre, left, right, inside_u)
    return torch.stack([u, v], dim=-1), height
