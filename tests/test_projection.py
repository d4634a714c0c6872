"""regbench.geometry.projection must agree with diffdrr's own projection and back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio
from diffdrr.data import read
from diffdrr.drr import DRR
from diffdrr.pose import RigidTransform
from scipy.spatial.transform import Rotation

from regbench.geometry.projection import (
    backproject_to_detector,
    intrinsic_matrix,
    invert_pose,
    project_points,
    reorient_matrix,
)

GEOMETRY_CASES = [
    dict(sdd=1020.0, height=30, width=40, delx=2.0, dely=2.5, x0=3.0, y0=-5.0, reverse_x_axis=True),
    dict(sdd=800.0, height=31, width=27, delx=1.5, dely=1.5, x0=0.0, y0=0.0, reverse_x_axis=False),
]


def _drr(geometry: dict, orientation: str | None) -> DRR:
    """A DRR over a tiny synthetic volume; only its detector matters here."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = torchio.ScalarImage(tensor=torch.rand(1, 6, 5, 4) * 100, affine=affine)
    subject = read(image, orientation=orientation)
    return DRR(
        subject,
        sdd=geometry["sdd"],
        height=geometry["height"],
        width=geometry["width"],
        delx=geometry["delx"],
        dely=geometry["dely"],
        x0=geometry["x0"],
        y0=geometry["y0"],
        reverse_x_axis=geometry["reverse_x_axis"],
        renderer="trilinear",
    )


def _random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """Poses around the default AP view: source about 600 mm from the isocenter."""
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.3, size=(n, 3))).as_matrix()
    poses[:, :3, 3] = rng.normal(scale=20.0, size=(n, 3)) + np.array([0.0, -600.0, 0.0])
    return poses


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
@pytest.mark.parametrize("geometry", GEOMETRY_CASES)
def test_matches_diffdrr(geometry: dict, orientation: str | None) -> None:
    rng = np.random.default_rng(0)
    geometry = {**geometry, "orientation": orientation}
    drr = _drr(geometry, orientation)
    poses = _random_poses(rng, 4)
    if orientation is None:  # identity reorient: the source looks along +z, put it behind
        poses[:, :3, 3] = rng.normal(scale=20.0, size=(4, 3)) + np.array([0.0, 0.0, -600.0])
    points = rng.normal(scale=50.0, size=(7, 3))

    pose_t = RigidTransform(torch.tensor(poses, dtype=torch.float32))
    pts_t = torch.tensor(np.broadcast_to(points, (4, 7, 3)).copy(), dtype=torch.float32)
    expected = drr.perspective_projection(pose_t, pts_t).numpy()
    got = project_points(poses, points, geometry)
    assert got.shape == (4, 7, 2)
    np.testing.assert_allclose(got, expected, atol=2e-3)

    pix = rng.uniform(0, 30, size=(4, 7, 2))
    expected_3d = drr.inverse_projection(pose_t, torch.tensor(pix, dtype=torch.float32)).numpy()
    got_3d = backproject_to_detector(pix, poses, geometry)
    np.testing.assert_allclose(got_3d, expected_3d, atol=5e-3)


def test_reorient_matches_diffdrr_read() -> None:
    image = torchio.ScalarImage(tensor=torch.zeros(1, 2, 2, 2), affine=np.eye(4))
    for orientation in ["AP", "PA", None]:
        expected = read(image, orientation=orientation).reorient.numpy()
        np.testing.assert_array_equal(reorient_matrix(orientation), expected)
    with pytest.raises(ValueError):
        reorient_matrix("LAT")


@pytest.mark.parametrize("geometry", GEOMETRY_CASES)
def test_isocenter_lands_on_principal_point(geometry: dict) -> None:
    rng = np.random.default_rng(1)
    geometry = {**geometry, "orientation": "AP"}
    isocenter = np.array([[10.0, -4.0, 7.0]])
    # Camera-to-world poses whose optical axis (camera +z, i.e. pose @ reorient) hits isocenter.
    cam = np.tile(np.eye(4), (3, 1, 1))
    cam[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.5, size=(3, 3))).as_matrix()
    cam[:, :3, 3] = isocenter[0] - 700.0 * cam[:, :3, 2]
    poses = cam @ np.linalg.inv(reorient_matrix("AP"))

    k = intrinsic_matrix(geometry)
    u0, v0 = k[0, 2], geometry["height"] - k[1, 2]
    if geometry["reverse_x_axis"]:
        u0 = geometry["width"] - u0
    pix = project_points(poses, isocenter, geometry)
    np.testing.assert_allclose(pix[:, 0], np.tile([u0, v0], (3, 1)), atol=1e-9)
    # ... and the pixel back-projects onto the detector point on the same ray.
    on_det = backproject_to_detector(pix, poses, geometry)
    expected = cam[:, :3, 3] + geometry["sdd"] * cam[:, :3, 2]
    np.testing.assert_allclose(on_det[:, 0], expected, atol=1e-9)


def test_invert_pose_and_single_pose_shapes() -> None:
    rng = np.random.default_rng(2)
    poses = _random_poses(rng, 3)
    np.testing.assert_allclose(
        invert_pose(poses) @ poses, np.tile(np.eye(4), (3, 1, 1)), atol=1e-12
    )
    geometry = {**GEOMETRY_CASES[0], "orientation": "AP"}
    assert project_points(poses[0], np.zeros((5, 3)), geometry).shape == (1, 5, 2)
    pix = project_points(poses, rng.normal(size=(5, 3)), geometry)
    before = pix.copy()
    world = backproject_to_detector(pix, poses, geometry)
    np.testing.assert_array_equal(pix, before)  # input left untouched
    np.testing.assert_allclose(project_points(poses, world[0], geometry)[0], pix[0], atol=1e-9)
