"""The renderer every DRR of a subject goes through, whichever ray marcher draws it.

Why one object: the config's ``render.renderer`` picks diffdrr's ``trilinear`` or ``siddon``,
or ``compiled``, diffdrr's trilinear geometry and quadrature drawn on the CPU by
:class:`~regbench.rendering.compiled_projector.FastProjector` (the same images to about 1e-6,
several times faster, differentiable w.r.t. the pose). Callers render poses one way,
:meth:`Renderer.render`, and never ask which path is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffdrr.drr import DRR

from regbench.data.subject import Prepared
from regbench.errors import InputError
from regbench.rendering.diffdrr_adapter import make_drr, render_drr

if TYPE_CHECKING:  # numba loads only when the compiled path is asked for
    from regbench.rendering.compiled_projector import FastProjector, FastVolume

RENDERERS = ("trilinear", "siddon", "compiled")


@dataclass(frozen=True)
class Compiled:
    """The compiled projector of a DRR and its volume, laid out once for every pose."""

    projector: FastProjector
    volume: FastVolume


@dataclass(frozen=True)
class Renderer:
    """A diffdrr DRR (detector geometry, density) and, if set, the compiled path that draws it."""

    drr: DRR
    compiled: Compiled | None = None

    @property
    def device(self) -> torch.device:
        return self.drr.device

    def render(self, poses: torch.Tensor, n_points: int) -> torch.Tensor:
        """(N,4,4) poses -> (N,1,H,W) float32 line integrals, each pose with its own sampling
        range (so an image never depends on its batch-mates)."""
        if self.compiled is not None:
            return self.compiled.projector(
                self.compiled.volume, poses.to(self.drr.density.device), n_points
            )
        return render_drr(self.drr, poses, n_points)


def make_renderer(
    prepared: Prepared,
    bone_attenuation: float,
    renderer: str = "trilinear",
    device: torch.device | str = "cpu",
) -> Renderer:
    """The renderer the config's ``render.renderer`` names; off the CPU ``compiled`` is
    diffdrr's trilinear renderer (the compiled projector is CPU-only)."""
    if renderer not in RENDERERS:
        raise InputError(f"config key 'render.renderer': unknown renderer {renderer!r}")
    kind = "siddon" if renderer == "siddon" else "trilinear"
    drr = make_drr(prepared, bone_attenuation, kind, device)
    if renderer != "compiled" or drr.density.device.type != "cpu":
        return Renderer(drr)
    from regbench.rendering.compiled_projector import FastProjector

    projector = FastProjector.from_drr(drr)
    return Renderer(drr, Compiled(projector, projector.prepare(drr.density)))
