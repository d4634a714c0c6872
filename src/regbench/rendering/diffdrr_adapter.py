"""diffdrr's DRR module over a prepared subject, and its one-pose-at-a-time rendering.

Why an adapter: diffdrr wants a torchio subject and keyword geometry; the project stores a CT
array, an affine and ``geometry.json``. Every diffdrr DRR of the project is built here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchio as tio
from diffdrr.data import read
from diffdrr.drr import DRR
from diffdrr.pose import RigidTransform

from regbench.data.subject import Prepared

DiffdrrRenderer = Literal["trilinear", "siddon"]


def make_drr(
    prepared: Prepared,
    bone_attenuation: float,
    renderer: DiffdrrRenderer = "trilinear",
    device: torch.device | str = "cpu",
) -> DRR:
    """A diffdrr DRR module over the prepared CT at its recorded detector geometry."""
    g = prepared.geometry
    subject = read(
        tio.ScalarImage(tensor=torch.from_numpy(prepared.ct)[None], affine=prepared.affine),
        orientation=g["orientation"],
        bone_attenuation_multiplier=bone_attenuation,
        center_volume=False,
    )
    return DRR(
        subject,
        sdd=g["sdd"],
        height=int(g["height"]),
        width=int(g["width"]),
        delx=g["delx"],
        dely=g["dely"],
        x0=g["x0"],
        y0=g["y0"],
        reverse_x_axis=bool(g["reverse_x_axis"]),
        renderer=renderer,
    ).to(device)


def render_drr(drr: DRR, poses: torch.Tensor, n_points: int) -> torch.Tensor:
    """(N,4,4) poses -> (N,1,H,W) line integrals with diffdrr.

    Poses are rendered one at a time: diffdrr's trilinear renderer samples every ray of a batch
    over the batch's common depth range, so a batched image would depend on its batch-mates
    (and on CPU one pose at a time is no slower).
    """
    poses = poses.to(device=drr.device, dtype=drr.density.dtype)
    kwargs = {"n_points": n_points} if _is_trilinear(drr) else {}
    return torch.cat([drr(RigidTransform(pose[None]), **kwargs) for pose in poses])


def _is_trilinear(drr: DRR) -> bool:
    return type(drr.renderer).__name__ == "Trilinear"
