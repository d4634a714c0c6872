"""DFLNet's landmark detector (Grupp et al. 2020): one heatmap per landmark, its labels and
its confident peaks.

The labels are Gaussians of ``sigma_px`` on the landmarks projected at a training DRR's known
pose; a landmark off the detector gets an empty map (the authors' code marks it as not in the
image). At test time a landmark is kept only where its heatmap looks like a label around its
peak: the authors' code correlates a window around the arg-max pixel with a Gaussian template of
the labels' sigma and keeps the landmark when the NCC reaches 0.9. Here the template is centred
on the sub-pixel peak (the landmark estimate), so an exact label scores 1 wherever it lies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from regbench.geometry.projection import Geometry, project_points
from regbench.models.heatmaps import gaussian_heatmaps, heatmap_peaks
from regbench.models.inputs import standardize
from regbench.models.unet import UNet


class HeatmapNet(nn.Module):
    """Standardised X-ray (N,1,H,W) -> (N,K,H,W) landmark heatmaps of one subject.

    It carries what its channels mean: the subject's landmarks (K,3, world mm) and the
    detector geometry its labels were projected with. Images whose sides are not multiples of
    ``2**depth`` are reflect-padded for the U-Net and cropped back (the authors reflect-pad
    their images to the U-Net's size too).
    """

    def __init__(self, points: np.ndarray, geometry: Geometry, base_channels: int, depth: int):
        super().__init__()
        self.register_buffer("points", torch.as_tensor(np.asarray(points), dtype=torch.float64))
        self.geometry = dict(geometry)
        self.unet = UNet(1, len(self.points), base_channels, depth)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = standardize(images)
        h, w = x.shape[-2:]
        multiple = 2**self.unet.depth
        ph, pw = -h % multiple, -w % multiple
        if ph or pw:
            pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            x = nn.functional.pad(x, pad, mode="reflect")
        out = self.unet(x)
        return out[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


def landmark_pixels(poses: np.ndarray, points: np.ndarray, geometry: Geometry) -> torch.Tensor:
    """(N,4,4) poses -> (N,K,2) float64 pixels of the landmarks, NaN where off the detector."""
    pixels = project_points(poses, points, geometry)
    h, w = int(geometry["height"]), int(geometry["width"])
    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h) & np.isfinite(pixels).all(-1)
    pixels[~inside] = np.nan
    return torch.from_numpy(pixels)


def landmark_labels(
    poses: np.ndarray, points: np.ndarray, geometry: Geometry, sigma_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training labels at known poses: (N,K,H,W) float32 heatmaps and (N,K) in-view mask."""
    pixels = landmark_pixels(poses, points, geometry)
    maps = gaussian_heatmaps(pixels, int(geometry["height"]), int(geometry["width"]), sigma_px)
    return maps.float(), torch.isfinite(pixels).all(-1)


def map_ncc(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """NCC of each pair of maps over their last two axes; 0 where one of them is flat."""
    xz = x - x.mean(dim=(-2, -1), keepdim=True)
    yz = y - y.mean(dim=(-2, -1), keepdim=True)
    num = (xz * yz).sum(dim=(-2, -1))
    # clamped before the square root: an empty label map must not send a NaN gradient
    den = (xz.square().sum(dim=(-2, -1)) * yz.square().sum(dim=(-2, -1))).clamp_min(eps**2)
    return num / den.sqrt()


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The authors' heatmap loss, ``(1 - NCC) / 2`` per map (in [0, 1]), averaged over the
    landmarks in view (an empty label has no NCC gradient in their loss either)."""
    loss = 0.5 * (1.0 - map_ncc(pred, target))
    if not bool(visible.any()):
        return pred.sum() * 0.0
    return loss[visible].mean()


def peak_confidence(
    maps: torch.Tensor, sigma_px: float, window_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,K,H,W) heatmaps -> (N,K,2) sub-pixel peaks and (N,K) template NCC at each peak.

    The window of ``window_px`` (odd) pixels around the arg-max pixel, reflect-padded at the
    image border, is compared with a Gaussian of ``sigma_px`` centred on the sub-pixel peak;
    a flat map scores 0 (see the module docstring for the threshold).
    """
    maps = maps.double()
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)  # the authors shift each map to min 0
    n, k, h, w = maps.shape
    peaks, _ = heatmap_peaks(maps)
    index = maps.reshape(n, k, -1).argmax(dim=-1)
    row, col = index // w, index % w
    half = min(window_px // 2, h - 1, w - 1)
    padded = nn.functional.pad(maps, (half, half, half, half), mode="reflect")
    offsets = torch.arange(-half, half + 1)
    rows = (row[..., None] + offsets)[..., :, None]  # (N,K,S,1) image rows of the window
    cols = (col[..., None] + offsets)[..., None, :]  # (N,K,1,S)
    batch = torch.arange(n)[:, None, None, None]
    landmark = torch.arange(k)[None, :, None, None]
    window = padded[batch, landmark, rows + half, cols + half]  # (N,K,S,S)
    du = cols + 0.5 - peaks[..., 0, None, None]
    dv = rows + 0.5 - peaks[..., 1, None, None]
    template = torch.exp(-(du.square() + dv.square()) / (2.0 * sigma_px**2))
    return peaks, map_ncc(template, window)
