"""Random X-ray-like degradations of training DRRs (domain randomisation around the gap)."""

from __future__ import annotations

import math

import torch

from regbench.rendering.simulator import degrade


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image gets its own noise level, blur, gamma and collimation."""
    out = []
    for img in images:
        out.append(
            degrade(
                img[None],
                generator,
                photons=math.exp(_uniform(generator, math.log(3e3), math.log(2e5))),
                attenuation_scale=_uniform(generator, 2.0, 4.0),
                blur_px=_uniform(generator, 0.0, 1.2),
                gamma=_uniform(generator, 0.7, 1.6),
                collimation_px=int(_uniform(generator, 0, 5)),
            )
        )
    return torch.cat(out)
