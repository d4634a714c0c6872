"""The X-ray's imaging chain in the learned similarity: detector blur and display gamma.

An X-ray is not a DRR: the detector blurs it (point-spread function) and the display maps the
line integrals through a gamma. Both move an intensity similarity's minimum: blur of sigma px
against an unblurred DRR biases the magnification, so the depth, by about
``sigma^2 / (2 R^2)`` (R the image's typical edge radius in px; about 0.3-0.4 mm at 850 mm and
64 px for sigma = 0.6), and a gamma changes which magnification best correlates. The learned
similarity of ``ours-*``/``abl-*`` therefore carries a two-parameter imaging model: its DRR
channel is blurred by a Gaussian of ``blur`` px and the X-ray of its image terms is linearised
by the power ``1/gamma``. In training each training X-ray's own blur and gamma are used; at
registration they are fitted to the X-ray at the pose LM reached (:func:`fit_imaging`), and LM
runs again with them: the fitted model makes the similarity's zero the truth again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regbench.models.variants import VARIANTS

KERNEL_RADIUS_PX = 4  # covers 3.3 sigma at the fit's largest blur
BLUR_GRID_PX = tuple(0.1 * i for i in range(13))  # 0 .. 1.2 px, the training domain's range
GAMMA_GRID = tuple(round(0.7 + 0.1 * i, 1) for i in range(10))  # 0.7 .. 1.6
START_BLUR_PX, START_GAMMA = 0.6, 1.15
FINE_STEP = 0.025  # second, finer grid around the coarse grid's best (+-3 steps)


@dataclass(frozen=True)
class Imaging:
    """Per-X-ray imaging model: ``blur`` (N,) Gaussian sigma of the detector [px] and
    ``gamma`` (N,) the display gamma."""

    blur: torch.Tensor
    gamma: torch.Tensor

    @staticmethod
    def start(n: int) -> Imaging:
        """The middle of the training domain's ranges: registration's first LM pass."""
        return Imaging(
            torch.full((n,), START_BLUR_PX, dtype=torch.float64),
            torch.full((n,), START_GAMMA, dtype=torch.float64),
        )


def effective_sigma(sigma: float) -> float:
    """Standard deviation of torchvision's ``gaussian_blur`` kernel of ``sigma`` (size
    ``2 int(3 sigma) + 1``, the simulator's): it truncates the Gaussian, so a sigma of 0.3 px
    does nothing and 0.6 px acts like 0.58 px."""
    radius = int(3 * sigma)
    if radius == 0 or sigma <= 0:
        return 0.0
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return float(((w * x**2).sum() / w.sum()).sqrt())


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """(N,) sigmas [px] -> (N, 2r+1) normalised 1D kernels (sigma 0: the identity)."""
    x = torch.arange(-KERNEL_RADIUS_PX, KERNEL_RADIUS_PX + 1, dtype=torch.float64)
    s = sigma.double().clamp_min(1e-3)[:, None]
    w = torch.exp(-(x**2) / (2 * s**2))
    return w / w.sum(-1, keepdim=True)


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) images, each blurred by its own Gaussian ``sigma`` (N,) [px]; reflecting
    borders, as the simulator's; differentiable in the images."""
    n, c, h, w = images.shape
    # One kernel per (image, channel).
    weight = gaussian_kernels(sigma).to(images.dtype).repeat_interleave(c, 0)
    flat = images.reshape(1, n * c, h, w)
    r = KERNEL_RADIUS_PX
    rows = F.conv2d(
        F.pad(flat, (r, r, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c
    )
    both = F.conv2d(
        F.pad(rows, (0, 0, r, r), mode="reflect"), weight[:, None, :, None], groups=n * c
    )
    return both.reshape(n, c, h, w)


def compose_drr(
    parts: torch.Tensor, bone: torch.Tensor, sigma: torch.Tensor | None
) -> torch.Tensor:
    """(N,2,H,W) soft-tissue and bone line integrals (or any linear image of them, such as
    their pose tangents), (N,) bone multipliers, (N,) detector blur [px] or None -> (N,1,H,W)
    DRR as the X-ray's detector would record it."""
    drr = parts[:, :1] + bone.to(parts.dtype)[:, None, None, None] * parts[:, 1:2]
    return drr if sigma is None else blur(drr, sigma)


def linearise_display(xrays: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """(N,1,H,W) X-rays in [0, 1] -> the same with the display gamma undone (``x^(1/gamma)``)."""
    if gamma is None:
        return xrays
    exponent = (1.0 / gamma.double()).to(xrays.dtype)[:, None, None, None]
    return xrays.clamp_min(0) ** exponent


def fit_grid(cost, blur_values, gamma_values) -> tuple[float, float]:
    """``cost(blur (K,), gamma (K,)) -> (K,)`` minimised over the pairs of two value lists."""
    b = torch.tensor(blur_values, dtype=torch.float64)
    g = torch.tensor(gamma_values, dtype=torch.float64)
    bb, gg = torch.meshgrid(b, g, indexing="ij")
    values = cost(bb.flatten(), gg.flatten())
    best = int(torch.argmin(values))
    return float(bb.flatten()[best]), float(gg.flatten()[best])


def fit_imaging(cost) -> tuple[float, float]:
    """Blur and gamma of one X-ray minimising ``cost(blur (K,), gamma (K,)) -> (K,)``: a coarse
    grid over the training domain's range, then a grid of ``FINE_STEP`` around its best."""
    b0, g0 = fit_grid(cost, BLUR_GRID_PX, GAMMA_GRID)
    around = [FINE_STEP * k for k in range(-3, 4)]
    blurs = [b0 + d for d in around if b0 + d >= 0]
    gammas = [g0 + d for d in around if g0 + d > 0]
    return fit_grid(cost, blurs, gammas)


def degradation_blur(sigmas: list[float]) -> torch.Tensor:
    """Simulator blur sigmas -> (N,) effective sigmas of the kernels it applied."""
    return torch.tensor([effective_sigma(s) for s in sigmas], dtype=torch.float64)


def uses_imaging_model(variant: str, cfg: dict) -> bool:
    """Whether ``variant``'s similarity (config section ``cfg``) models the X-ray's imaging
    chain: the LM-refined variants with image terms (where blur and gamma are fitted), unless
    ``imaging_model`` switches it off."""
    lm = VARIANTS[variant].refiner == "lm"
    return lm and cfg.get("pooled_size") != 0 and bool(cfg.get("imaging_model", True))
