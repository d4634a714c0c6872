"""Random X-ray-like degradations of training DRRs (domain randomisation around the gap)."""

from __future__ import annotations

import math

import torch

from regbench.models.imaging import Imaging, degradation_blur
from regbench.rendering.simulator import degrade


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def augment(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Imaging]:
    """Each image gets its own noise level, blur, gamma and collimation; returns the images and
    their imaging model (the effective blur of the kernel that was applied, and the gamma),
    which the learned similarity's DRR branch is trained with."""
    out, blurs, gammas = [], [], []
    for img in images:
        photons = math.exp(_uniform(generator, math.log(3e3), math.log(2e5)))
        attenuation_scale = _uniform(generator, 2.0, 4.0)
        blurs.append(_uniform(generator, 0.0, 1.2))
        gammas.append(_uniform(generator, 0.7, 1.6))
        out.append(
            degrade(
                img[None],
                generator,
                photons=photons,
                attenuation_scale=attenuation_scale,
                blur_px=blurs[-1],
                gamma=gammas[-1],
                collimation_px=int(_uniform(generator, 0, 5)),
            )
        )
    imaging = Imaging(degradation_blur(blurs), torch.tensor(gammas, dtype=torch.float64))
    return torch.cat(out), imaging
