"""Simulated test X-rays: DRRs at prior poses, pushed away from the training renders.

The domain gap models what separates a real radiograph from a DRR: a different bone/soft-tissue
contrast (bone attenuation multiplier), quantum noise (Poisson on a Beer-Lambert photon count),
detector blur, a display gamma and a collimator border.
"""

from __future__ import annotations

import torch
from torchvision.transforms.functional import gaussian_blur

from regbench.data.subject import Prepared
from regbench.data.xrays import XraySet
from regbench.geometry.priors import PosePrior
from regbench.rendering.renderer import make_renderer


def degrade(
    clean: torch.Tensor,
    generator: torch.Generator,
    photons: float,
    attenuation_scale: float,
    blur_px: float,
    gamma: float,
    collimation_px: int,
) -> torch.Tensor:
    """(N,1,H,W) line integrals -> (N,1,H,W) X-ray-like images in [0, 1] (bright = dense)."""
    peak = clean.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    depth = attenuation_scale * clean / peak
    counts = torch.poisson(photons * torch.exp(-depth), generator=generator)
    noisy = -torch.log(counts.clamp_min(1.0) / photons)
    if blur_px > 0:
        k = 2 * int(3 * blur_px) + 1
        noisy = gaussian_blur(noisy, [k, k], [blur_px, blur_px])
    lo = noisy.amin(dim=(-2, -1), keepdim=True)
    hi = noisy.amax(dim=(-2, -1), keepdim=True)
    img = ((noisy - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) ** gamma
    if collimation_px > 0:
        c = collimation_px
        border = torch.ones_like(img, dtype=torch.bool)
        border[..., c:-c, c:-c] = False
        img = img.masked_fill(border, 0.0)
    return img


def simulate_xrays(
    prepared: Prepared,
    prior: PosePrior,
    n: int,
    seed: int,
    render_cfg: dict,
    sim_cfg: dict,
) -> XraySet:
    generator = torch.Generator().manual_seed(seed)
    poses = prior.sample(n, generator)
    renderer = make_renderer(prepared, sim_cfg["bone_attenuation"], render_cfg["renderer"])
    with torch.no_grad():
        clean = renderer.render(poses, render_cfg["n_points"])
    images = degrade(
        clean,
        generator,
        sim_cfg["photons"],
        sim_cfg["attenuation_scale"],
        sim_cfg["blur_px"],
        sim_cfg["gamma"],
        sim_cfg["collimation_px"],
    )
    ids = [f"{i:04d}" for i in range(n)]
    return XraySet(
        ids, images.float(), poses, prepared.geometry, clean.float(), sim_cfg["collimation_px"]
    )
