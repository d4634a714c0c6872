"""Shared parts of the landmark methods: PnP with RANSAC and landmark heatmaps, against known
poses and exact projections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from regbench.data.subject import Prepared
from regbench.evaluate import mtre
from regbench.geometry.pnp import pose_from_correspondences
from regbench.geometry.poses import carm_pose
from regbench.geometry.projection import project_points, reorient_matrix
from regbench.models.heatmaps import gaussian_heatmaps, heatmap_peaks, pixel_centres
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.torch_projector import FeatureProjector


def geometry(reverse_x_axis: bool = True, orientation: str = "AP") -> dict:
    return {
        "sdd": 1020.0,
        "height": 64,
        "width": 48,
        "delx": 6.25,
        "dely": 6.25,
        "x0": 3.0,
        "y0": -5.0,
        "reverse_x_axis": reverse_x_axis,
        "orientation": orientation,
    }


def true_pose() -> np.ndarray:
    rot = torch.tensor([[0.06, -0.04, 0.03]], dtype=torch.float64)
    trans = torch.tensor([[7.0, 830.0, -12.0]], dtype=torch.float64)
    return carm_pose(rot, trans)[0].numpy()


def pose_for(orientation: str) -> np.ndarray:
    """A rigid pose that puts the points in front of the source for ``orientation`` (PA's
    reorient is a reflection: the same camera, mirrored)."""
    if orientation == "AP":
        return true_pose()
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    return true_pose() @ reorient_matrix("AP") @ mirror @ reorient_matrix(orientation).T


def landmarks(n: int = 20) -> np.ndarray:
    return np.random.default_rng(0).uniform(-90.0, 90.0, size=(n, 3))


@pytest.mark.parametrize(("reverse", "orientation"), [(True, "AP"), (False, "AP"), (True, "PA")])
def test_pnp_recovers_a_known_pose_from_exact_correspondences(reverse, orientation):
    g = geometry(reverse, orientation)
    pose, points = pose_for(orientation), landmarks()
    assert np.isclose(np.linalg.det(pose[:3, :3]), 1.0)
    pixels = project_points(pose, points, g)[0]
    result = pose_from_correspondences(pixels, points, g)
    assert result.ok and result.inliers.all()
    assert mtre(result.pose, pose, points)[0] < 1e-6
    np.testing.assert_allclose(result.pose, pose, atol=1e-6)


def test_pnp_ransac_rejects_30_percent_outliers():
    g = geometry()
    pose, points = true_pose(), landmarks(20)
    pixels = project_points(pose, points, g)[0]
    outliers = np.arange(0, 20, 3)[:6]  # 6 of 20 = 30%
    pixels[outliers] += np.random.default_rng(1).uniform(8.0, 20.0, size=(6, 2))  # pixels off
    result = pose_from_correspondences(pixels, points, g, reprojection_px=1.0)
    assert result.ok
    np.testing.assert_array_equal(~result.inliers, np.isin(np.arange(20), outliers))
    assert mtre(result.pose, pose, points)[0] < 1e-4  # refined on the inliers alone
    again = pose_from_correspondences(pixels, points, g, reprojection_px=1.0)
    np.testing.assert_array_equal(again.pose, result.pose)  # seeded: the same pose


def test_pnp_with_too_few_points_finds_no_pose():
    g = geometry()
    points = landmarks(5)
    pixels = project_points(true_pose(), points, g)[0]
    pixels[:2] = np.nan  # two landmarks not detected
    result = pose_from_correspondences(pixels, points, g)
    assert not result.ok and "3 usable" in result.message and not result.inliers.any()


def test_heatmap_peaks_recover_subpixel_landmarks_exactly():
    g = geometry()
    points = landmarks(12) * 0.8
    pixels = torch.from_numpy(project_points(true_pose(), points, g))  # (1,K,2)
    maps = gaussian_heatmaps(pixels, g["height"], g["width"], sigma_px=1.5)
    assert maps.shape == (1, 12, 64, 48) and float(maps.max()) <= 1.0
    peaks, heights = heatmap_peaks(maps)
    torch.testing.assert_close(peaks, pixels, atol=1e-9, rtol=0)
    assert (heights > 0.8).all()  # the sampled peak is within half a pixel of the centre


def test_unknown_landmarks_get_empty_maps():
    pixels = torch.tensor([[[10.3, 7.8], [float("nan"), float("nan")]]], dtype=torch.float64)
    maps = gaussian_heatmaps(pixels, 16, 16, sigma_px=1.0)
    assert float(maps[0, 1].abs().max()) == 0.0 and float(maps[0, 0].max()) > 0.5


def test_pixel_centres_are_where_diffdrrs_rays_hit_the_detector():
    """The heatmaps' pixel grid is the detector's: each diffdrr ray projects to its pixel's
    centre (row-major, as the images are laid out)."""
    g = geometry()
    ct = np.full((8, 8, 8), 100.0, dtype=np.float32)
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = -35.0
    drr = make_drr(Prepared(ct, affine, pd.DataFrame(), g), 1.0)
    pose = torch.from_numpy(true_pose())
    _, targets = FeatureProjector.from_drr(drr).rays(pose[None])
    hits = project_points(pose.numpy(), targets[0].numpy(), g)[0]
    expected = pixel_centres(g["height"], g["width"]).reshape(-1, 2).numpy()
    np.testing.assert_allclose(hits, expected, atol=1e-6)
