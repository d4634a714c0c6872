"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from regbench.evaluate import (
    bootstrap_ci,
    legacy_diffpose_mrpe,
    mrpe,
    mtre,
    paired_mean_difference,
    percentile,
    pose_metrics,
    rotation_error_deg,
    summarize,
    translation_error_mm,
)
from regbench.geometry.projection import reorient_matrix


def _pose(rotvec_deg=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(rotvec_deg, degrees=True).as_matrix()
    pose[:3, 3] = t
    return pose


GT = _pose((5.0, -20.0, 3.0), (10.0, -600.0, 4.0))
LANDMARKS = np.array([[0.0, 0.0, 0.0], [30.0, -10.0, 5.0], [-20.0, 40.0, 60.0]])


def test_pure_translation_gives_its_length() -> None:
    est = GT.copy()
    est[:3, 3] += 3.0 * np.array([0.6, 0.0, 0.8])
    np.testing.assert_allclose(mtre(est, GT, LANDMARKS), [3.0])
    np.testing.assert_allclose(translation_error_mm(est, GT), [3.0])
    np.testing.assert_allclose(rotation_error_deg(est, GT), [0.0], atol=1e-12)


def test_rotation_about_a_landmark() -> None:
    # est = gt @ M, M a 90-degree turn about z through the landmark's camera-frame position c.
    c = np.linalg.inv(GT) @ np.array([*LANDMARKS[1], 1.0])
    turn = _pose((0.0, 0.0, 90.0))
    move_to_c = _pose(t=c[:3])
    est = GT @ move_to_c @ turn @ np.linalg.inv(move_to_c)
    np.testing.assert_allclose(mtre(est, GT, LANDMARKS[1:2]), [0.0], atol=1e-9)
    # A second landmark 10 mm from c along camera x: (10, 0, 0) -> (0, -10, 0), 10*sqrt(2) mm.
    second = (GT @ np.array([*(c[:3] + [10.0, 0.0, 0.0]), 1.0]))[:3]
    np.testing.assert_allclose(mtre(est, GT, second[None]), [10.0 * math.sqrt(2.0)])
    np.testing.assert_allclose(rotation_error_deg(est, GT), [90.0])


def test_identical_poses_give_zero() -> None:
    geometry = dict(sdd=1000, height=64, width=64, delx=2.0, dely=2.0, x0=0, y0=0)
    geometry |= dict(reverse_x_axis=True, orientation="AP")
    batch = np.stack([GT, _pose((1, 2, 3), (4, 5, -500))])
    metrics = pose_metrics(batch, batch, LANDMARKS, geometry)
    for name, value in metrics.items():
        np.testing.assert_allclose(value, [0.0, 0.0], atol=1e-9, err_msg=name)


@pytest.mark.parametrize("orientation", [None, "AP"])
def test_mrpe_translation_parallel_to_detector(orientation: str | None) -> None:
    # Source at the origin looking along world +z, landmarks at depth 500 mm, sdd 1000 mm:
    # magnification 2, so a 3 mm source shift along x moves every projection 6 mm (3 px).
    geometry = dict(sdd=1000.0, height=100, width=120, delx=2.0, dely=2.0, x0=0.0, y0=0.0)
    geometry |= dict(reverse_x_axis=True, orientation=orientation)
    undo = np.linalg.inv(reorient_matrix(orientation))  # pose @ reorient = camera-to-world
    gt = np.eye(4) @ undo
    est = _pose(t=(3.0, 0.0, 0.0)) @ undo
    landmarks = np.array([[0.0, 0.0, 500.0], [20.0, -10.0, 500.0], [-5.0, 30.0, 500.0]])
    got = mrpe(est, gt, landmarks, geometry)
    np.testing.assert_allclose(got, [6.0])
    np.testing.assert_allclose(legacy_diffpose_mrpe(got, geometry), [12.0])
    np.testing.assert_allclose(mtre(est, gt, landmarks), [3.0])


def test_known_rotation_error_and_broadcasting() -> None:
    est = np.stack([GT @ _pose((0.0, 10.0, 0.0)), GT @ _pose((0.0, 0.0, -10.0)), GT])
    np.testing.assert_allclose(rotation_error_deg(est, GT), [10.0, 10.0, 0.0], atol=1e-9)
    tiny = GT @ _pose((1e-7, 0.0, 0.0))
    np.testing.assert_allclose(rotation_error_deg(tiny, GT), [1e-7], rtol=1e-6)
    assert mtre(est, GT, LANDMARKS).shape == (3,)
    with pytest.raises(ValueError):
        mtre(est, np.stack([GT, GT]), LANDMARKS)


def test_summarize_hand_made() -> None:
    values = np.array([5.0, 0.5, 20.0, 0.8, 2.0])
    out = summarize(values, np.array([1.0, 2.0, 3.0, 4.0, 50.0]), np.array(["ok"] * 5))
    assert out["n"] == 5 and out["n_failed"] == 0
    assert out["smsr"] == pytest.approx(0.4)
    assert out["sr10"] == pytest.approx(0.8)
    assert out["median_mm"] == pytest.approx(2.0)
    assert out["p75_mm"] == pytest.approx(5.0)  # h = 4 * 0.75 = 3 -> sorted[3]
    assert out["p95_mm"] == pytest.approx(17.0)  # h = 3.8 -> 5 + 0.8 * 15
    assert out["mean_mm"] == pytest.approx(5.66)
    assert out["std_mm"] == pytest.approx(np.std(values, ddof=1))
    assert out["median_seconds"] == pytest.approx(3.0)
    assert out["smsr_ci_low"] <= out["smsr"] <= out["smsr_ci_high"]
    assert out["median_ci_low"] <= out["median_mm"] <= out["median_ci_high"]


def test_summarize_counts_failures_as_infinite() -> None:
    values = np.array([0.2, 0.5, 0.9, 3.0, np.nan, 0.4])
    status = np.array(["ok", "ok", "ok", "ok", "ok", "failed"])
    out = summarize(values, np.ones(6), status)
    assert out["n"] == 6 and out["n_failed"] == 2
    assert out["smsr"] == pytest.approx(0.5)  # the failed 0.4 mm run is not a success
    assert out["median_mm"] == pytest.approx(1.95)  # sorted [.2 .5 .9 3 inf inf], h = 2.5
    assert out["p75_mm"] == math.inf
    assert out["mean_mm"] == pytest.approx(1.15)  # successful runs only
    all_failed = summarize(np.array([1.0, 2.0]), np.ones(2), np.array(["failed"] * 2))
    assert all_failed["smsr"] == 0.0 and all_failed["median_mm"] == math.inf
    assert math.isnan(all_failed["mean_mm"])


def test_summarize_bootstrap_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=0.0, sigma=1.0, size=40)
    args = (values, np.ones(40), np.array(["ok"] * 40))
    first, second = summarize(*args, seed=3), summarize(*args, seed=3)
    assert first == second
    small = [bootstrap_ci(values, 1.0, n_boot=20, seed=seed) for seed in range(5)]
    assert len({tuple(ci.values()) for ci in small}) > 1  # the seed does drive the resampling
    sure = summarize(np.full(10, 0.1), np.ones(10), np.array(["ok"] * 10))
    assert sure["smsr_ci_low"] == sure["smsr_ci_high"] == 1.0


def test_summarize_empty() -> None:
    out = summarize(np.array([]), np.array([]), np.array([]))
    assert out["n"] == 0 and out["n_failed"] == 0
    assert all(math.isnan(out[k]) for k in ("smsr", "median_mm", "smsr_ci_low", "median_seconds"))


def test_percentile_matches_numpy_on_finite_data() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        x = rng.normal(size=n)
        for q in (0.0, 2.5, 25.0, 50.0, 95.0, 100.0):
            assert percentile(x, q) == np.percentile(x, q)
    np.testing.assert_array_equal(percentile([1.0, 2.0, np.inf], [0, 50, 75]), [1.0, 2.0, np.inf])


def test_rotation_about_the_isocentre_has_no_translation_error() -> None:
    # A C-arm rotation about the world origin (the CT isocentre) moves the source far away,
    # but the isocentre stays where the camera expects it.
    est = _pose((0.0, 0.0, 10.0)) @ GT
    np.testing.assert_allclose(translation_error_mm(est, GT), [0.0], atol=1e-9)
    np.testing.assert_allclose(rotation_error_deg(est, GT), [10.0], atol=1e-9)
    assert mtre(est, GT, LANDMARKS[1:])[0] > 1.0


def test_paired_mean_difference_known_answers() -> None:
    reference = np.array([0.1, 0.5, 2.0, 0.3])
    shifted = paired_mean_difference(reference + 0.25, reference, n_boot=100, seed=0)
    assert shifted["mean"] == pytest.approx(0.25) and shifted["n"] == 4
    assert shifted["low"] == pytest.approx(0.25) and shifted["high"] == pytest.approx(0.25)
    # A failure (inf) or missing value on either side drops that X-ray from the pairs.
    values = np.array([0.2, np.inf, 1.0, np.nan])
    d = paired_mean_difference(values, reference, n_boot=500, seed=3)
    assert d["n"] == 2 and d["mean"] == pytest.approx((0.1 - 1.0) / 2)
    assert -1.0 <= d["low"] <= d["mean"] <= d["high"] <= 0.1
    assert d == paired_mean_difference(values, reference, n_boot=500, seed=3)  # deterministic
    assert math.isnan(paired_mean_difference(values[:0], reference[:0])["mean"])
    with pytest.raises(ValueError, match="shape"):
        paired_mean_difference(values, reference[:2])
