"""``embedded-cohort``: a synthetic patient cohort derived from the bundled chest CT.

Why: the patient-agnostic (generalization) scenario trains on some patients and registers on
others, so the default offline run needs several subjects. Each subject is the embedded CT moved
by its own smooth random deformation (anisotropic scaling plus an elastic displacement field)
with changed intensities; landmarks move with the anatomy exactly.

The deformation is defined by its *backward* map, from a subject's world point ``y`` to the base
(embedded) world point it shows::

    psi(y) = y / s + d(y),    d(y) = sum_k a_k sin(w_k . y + phi_k)

(``s`` the per-axis scale, ``d`` a sum of a few plane waves: smooth, closed form, cheap anywhere).
The subject's CT is the base CT sampled at ``psi`` of its voxel centres, so the anatomy at base
point ``x`` appears at ``phi(x) = psi^-1(x)``; landmarks are mapped by ``phi``, computed by the
fixed-point iteration ``y <- s * (x - d(y))``. The amplitudes are capped so that this iteration is
a contraction (``max(s) * Lip(d) <= MAX_CONTRACTION``): ``psi`` is then a diffeomorphism and
``phi`` converges to machine precision; the residual ``|psi(phi(x)) - x|`` is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from regbench.data.prepare import PreparedSubject
from regbench.data.volumes import voxel_to_world
from regbench.errors import InputError

MAX_CONTRACTION = 0.5  # bound on max(s) * Lip(d); keeps psi invertible and phi's iteration fast
AIR_HU = -1000.0
BONE_HU = 200.0  # above this, the bone gain applies
INVERSE_TOL_MM = 1e-9
SLAB_VOXELS = 2_000_000  # voxels sampled at once (bounds memory on fine grids)


@dataclass(frozen=True)
class Deformation:
    """A subject's deformation and intensity change relative to the base CT (world mm, HU)."""

    scale: np.ndarray  # (3,) per-axis scale of the anatomy
    amplitudes: np.ndarray  # (K,3) mm
    frequencies: np.ndarray  # (K,3) rad/mm
    phases: np.ndarray  # (K,) rad
    gain: float = 1.0  # HU' = AIR + gain (HU - AIR) + offset * tissue + (bone_gain - 1) * bone
    offset_hu: float = 0.0
    bone_gain: float = 1.0

    def displacement(self, y: np.ndarray) -> np.ndarray:
        """d(y) for (N,3) points."""
        waves = np.sin(y @ self.frequencies.T + self.phases)  # (N,K)
        return waves @ self.amplitudes

    def backward(self, y: np.ndarray) -> np.ndarray:
        """psi: subject world points (N,3) -> the base world points they show."""
        y = np.asarray(y, dtype=np.float64)
        return y / self.scale + self.displacement(y)

    def forward(self, x: np.ndarray, max_iter: int = 200) -> np.ndarray:
        """phi = psi^-1: base world points (N,3) -> where they are in the subject."""
        x = np.asarray(x, dtype=np.float64)
        y = self.scale * x
        for _ in range(max_iter):
            new = self.scale * (x - self.displacement(y))
            step = np.abs(new - y).max() if len(y) else 0.0
            y = new
            if step < INVERSE_TOL_MM * 1e-3:
                break
        residual = np.abs(self.backward(y) - x).max() if len(y) else 0.0
        if residual > INVERSE_TOL_MM * 1e3:
            raise RuntimeError(f"deformation inverse did not converge (residual {residual} mm)")
        return y

    def lipschitz(self) -> float:
        """Upper bound of the operator norm of d's Jacobian."""
        return float(
            (
                np.linalg.norm(self.amplitudes, axis=1) * np.linalg.norm(self.frequencies, axis=1)
            ).sum()
        )

    def max_displacement(self) -> np.ndarray:
        """(3,) bound of |d| per axis."""
        return np.abs(self.amplitudes).sum(axis=0)

    def intensities(self, hu: np.ndarray) -> np.ndarray:
        """The subject's HU from the base's (air stays air)."""
        tissue = np.clip((hu - AIR_HU) / -AIR_HU, 0.0, 1.0)
        bone = np.maximum(hu - BONE_HU, 0.0)
        out = AIR_HU + self.gain * (hu - AIR_HU) + self.offset_hu * tissue
        return (out + (self.bone_gain - 1.0) * bone).astype(np.float32)


def sample_deformation(seed: int, cfg: Mapping) -> Deformation:
    """A random deformation from the cohort config (``scale_std``, ``elastic_*``, ``*_std``)."""
    rng = np.random.default_rng(seed)
    scale = np.clip(1.0 + cfg["scale_std"] * rng.standard_normal(3), 0.8, 1.25)
    k = int(cfg["elastic_components"])
    directions = rng.standard_normal((k, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = cfg["elastic_wavelength_mm"] * rng.uniform(0.75, 1.25, k)
    frequencies = directions * (2 * np.pi / wavelengths)[:, None]
    amplitudes = cfg["elastic_mm"] * rng.standard_normal((k, 3)) / np.sqrt(max(k, 1))
    phases = rng.uniform(0, 2 * np.pi, k)
    deformation = Deformation(scale, amplitudes, frequencies, phases)
    bound = scale.max() * deformation.lipschitz()
    if bound > MAX_CONTRACTION:  # too rough to invert safely: soften it
        amplitudes = amplitudes * (MAX_CONTRACTION / bound)
    return Deformation(
        scale,
        amplitudes,
        frequencies,
        phases,
        gain=float(np.clip(1.0 + cfg["gain_std"] * rng.standard_normal(), 0.7, 1.3)),
        offset_hu=float(cfg["offset_hu_std"] * rng.standard_normal()),
        bone_gain=float(np.clip(1.0 + cfg["bone_gain_std"] * rng.standard_normal(), 0.6, 1.5)),
    )


def output_grid(base_affine: np.ndarray, base_shape, deformation: Deformation, spacing_mm: float):
    """Shape and affine of a centred isotropic grid that holds the deformed anatomy.

    The base grid is centred on the origin (prepared CTs are); its half-extent h maps to at most
    s * (h + max|d|) per axis.
    """
    corners = voxel_to_world(base_affine, np.array([[0, 0, 0], np.asarray(base_shape) - 1]))
    half = np.abs(corners).max(axis=0)
    half_new = deformation.scale * (half + deformation.max_displacement())
    shape = tuple(int(n) for n in np.ceil(2 * half_new / spacing_mm).astype(int) + 1)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing_mm  # grid centre at the origin
    return shape, affine


def warp(
    volume: np.ndarray,
    base_affine: np.ndarray,
    shape,
    affine: np.ndarray,
    deformation: Deformation,
    order: int,
    cval: float,
) -> np.ndarray:
    """Sample ``volume`` (on ``base_affine``) at psi of every voxel centre of the new grid."""
    from scipy.ndimage import map_coordinates

    to_base_voxel = np.linalg.inv(base_affine)
    out = np.empty(shape, dtype=volume.dtype)
    per_slab = max(1, SLAB_VOXELS // (shape[0] * shape[1]))
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k0 in range(0, shape[2], per_slab):
        k1 = min(shape[2], k0 + per_slab)
        ijk = np.stack(
            [
                np.repeat(i[..., None], k1 - k0, axis=2),
                np.repeat(j[..., None], k1 - k0, axis=2),
                np.broadcast_to(np.arange(k0, k1), (shape[0], shape[1], k1 - k0)),
            ],
            axis=-1,
        ).reshape(-1, 3)
        base = deformation.backward(voxel_to_world(affine, ijk))
        idx = base @ to_base_voxel[:3, :3].T + to_base_voxel[:3, 3]
        values = map_coordinates(volume, idx.T, order=order, mode="constant", cval=cval)
        out[:, :, k0:k1] = values.reshape(shape[0], shape[1], k1 - k0)
    return out


def deform_subject(
    base: PreparedSubject, deformation: Deformation, spacing_mm: float
) -> PreparedSubject:
    """The base subject seen through ``deformation``: CT, mask and landmarks moved together."""
    shape, affine = output_grid(base.affine, base.ct.shape, deformation, spacing_mm)
    background = float(base.ct.min())
    ct = warp(base.ct, base.affine, shape, affine, deformation, 1, background)
    ct = deformation.intensities(ct)
    mask = None
    if base.mask is not None:
        mask = warp(base.mask.astype(np.int32), base.affine, shape, affine, deformation, 0, 0)
    landmarks = base.landmarks.copy()
    xyz = deformation.forward(landmarks[["x", "y", "z"]].to_numpy(np.float64))
    landmarks[["x", "y", "z"]] = xyz
    return PreparedSubject(ct, mask, affine, landmarks, np.zeros(3))


def prepare_cohort_subject(cfg: Mapping, seed: int) -> PreparedSubject:
    """One cohort subject from the embedded CT resampled to ``cfg['spacing_mm']``."""
    from regbench.data.embedded import prepare_embedded

    base = prepare_embedded(cfg["spacing_mm"], cfg["min_label_voxels"])
    deformation = sample_deformation(seed, cfg)
    subject = deform_subject(base, deformation, cfg["spacing_mm"])
    if not np.isfinite(subject.ct).all():
        raise InputError("the deformed CT has non-finite voxels")
    return subject


def deformation_summary(deformation: Deformation) -> pd.Series:
    """For logs: the scale, the largest displacement and the intensity change."""
    return pd.Series(
        {
            "scale": np.round(deformation.scale, 3).tolist(),
            "max_displacement_mm": np.round(deformation.max_displacement(), 2).tolist(),
            "contraction": round(float(deformation.scale.max() * deformation.lipschitz()), 3),
            "gain": round(deformation.gain, 3),
            "offset_hu": round(deformation.offset_hu, 1),
            "bone_gain": round(deformation.bone_gain, 3),
        }
    )
