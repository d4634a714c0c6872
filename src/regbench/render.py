"""DRR rendering of a prepared subject with diffdrr (the only renderer the baselines use)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from diffdrr.data import read
from diffdrr.drr import DRR
from diffdrr.pose import RigidTransform

from regbench.data.landmarks import landmark_array, read_landmarks
from regbench.data.volumes import read_ct
from regbench.errors import InputError

RENDERERS = ("trilinear", "siddon", "compiled")
GEOMETRY_KEYS = ("sdd", "height", "width", "delx", "dely", "x0", "y0", "reverse_x_axis")


@dataclass
class Prepared:
    """A prepared subject as every later stage sees it."""

    ct: np.ndarray
    affine: np.ndarray
    landmarks: pd.DataFrame
    geometry: dict

    @property
    def points(self) -> np.ndarray:
        return landmark_array(self.landmarks)


def read_geometry(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"geometry file not found: {path}")
    try:
        geometry = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"geometry file {path} is not valid JSON: {exc}") from exc
    missing = [k for k in GEOMETRY_KEYS if k not in geometry]
    if missing:
        raise InputError(f"geometry file {path}: missing keys {missing}")
    for key in ("sdd", "delx", "dely", "height", "width"):
        if not float(geometry[key]) > 0:
            raise InputError(f"geometry file {path}: '{key}' must be positive")
    geometry.setdefault("orientation", "AP")
    return geometry


def load_prepared(prepared_dir: str | Path) -> Prepared:
    d = Path(prepared_dir)
    ct, affine = read_ct(d / "ct.nii.gz")
    landmarks = read_landmarks(d / "landmarks.csv", affine, ct.shape)
    return Prepared(ct, affine, landmarks, read_geometry(d / "geometry.json"))


def make_drr(
    prepared: Prepared,
    bone_attenuation: float,
    renderer: str = "trilinear",
    device: torch.device | str = "cpu",
) -> DRR:
    """A diffdrr DRR module over the prepared CT at its recorded detector geometry.

    ``renderer``: diffdrr's ``trilinear`` or ``siddon``, or ``compiled``: diffdrr's trilinear
    geometry and quadrature rendered on the CPU by :class:`regbench.fastproject.FastProjector`
    (the same images to about 1e-6, several times faster, differentiable w.r.t. the pose); on
    other devices ``compiled`` is diffdrr's trilinear renderer. :func:`render` picks the path.
    """
    if renderer not in RENDERERS:
        raise InputError(f"config key 'render.renderer': unknown renderer {renderer!r}")
    g = prepared.geometry
    subject = read(
        tio.ScalarImage(tensor=torch.from_numpy(prepared.ct)[None], affine=prepared.affine),
        orientation=g["orientation"],
        bone_attenuation_multiplier=bone_attenuation,
        center_volume=False,
    )
    drr = DRR(
        subject,
        sdd=g["sdd"],
        height=int(g["height"]),
        width=int(g["width"]),
        delx=g["delx"],
        dely=g["dely"],
        x0=g["x0"],
        y0=g["y0"],
        reverse_x_axis=bool(g["reverse_x_axis"]),
        renderer="trilinear" if renderer == "compiled" else renderer,
    ).to(device)
    if renderer == "compiled" and drr.density.device.type == "cpu":
        from regbench.fastproject import FastProjector

        projector = FastProjector.from_drr(drr)
        drr.compiled = (projector, projector.prepare(drr.density))
    return drr


def render(drr: DRR, poses: torch.Tensor, n_points: int) -> torch.Tensor:
    """(N,4,4) poses -> (N,1,H,W) float32 line integrals.

    Poses are rendered one at a time: diffdrr's trilinear renderer samples every ray of a batch
    over the batch's common depth range, so a batched image would depend on its batch-mates
    (and on CPU one pose at a time is no slower).
    """
    compiled = getattr(drr, "compiled", None)
    if compiled is not None:  # per-pose sampling ranges, as below
        projector, volume = compiled
        return projector(volume, poses.to(drr.density.device), n_points)
    poses = poses.to(device=drr.device, dtype=drr.density.dtype)
    kwargs = {"n_points": n_points} if _is_trilinear(drr) else {}
    return torch.cat([drr(RigidTransform(pose[None]), **kwargs) for pose in poses])


def _is_trilinear(drr: DRR) -> bool:
    return type(drr.renderer).__name__ == "Trilinear"


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per image: intensities of X-rays and DRRs are not comparable."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + eps)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'device' is 'cuda' but CUDA is not available")
    return torch.device(name)
