"""Figures are written (png + pdf), deterministically, from tiny synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.figures import (
    convergence,
    difference_map,
    interpolate_on_grid,
    load_trajectories,
    mtre_distribution,
    qualitative_panel,
    seconds_to_threshold,
)


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("embedded", "deepfluoro"):
        for method, scale in (("posenet", 8.0), ("ours-so4", 0.3)):
            for i in range(6):
                status = "failed" if (method == "posenet" and i == 0) else "ok"
                rows.append(
                    dict(dataset=dataset, xray_id=f"x{i}", method=method, status=status,
                         mtre_mm=scale * rng.lognormal()),
                )  # fmt: skip
    rows.append(dict(dataset="embedded", xray_id="x9", method="ours-so4", status="ok", mtre_mm=0.0))
    return pd.DataFrame(rows)


def _trajectories() -> pd.DataFrame:
    rows = []
    for method, rate in (("diffpose", 0.7), ("ours-so4", 0.3)):
        for i, n_iter in enumerate((3, 5, 8)):
            start = 0.5 + 0.1 * i  # initialisation time before iteration 0
            for it in range(n_iter + 1):
                rows.append(
                    dict(xray_id=f"x{i}", method=method, iteration=it,
                         seconds=start + 0.4 * it, mtre_mm=20.0 * rate**it),
                )  # fmt: skip
    return pd.DataFrame(rows)


def _assert_written(paths: list[Path], stem: Path) -> None:
    assert [p.name for p in paths] == [f"{stem.name}.png", f"{stem.name}.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert not list(stem.parent.glob(".*"))  # no temporary leftovers


def test_mtre_distribution_writes_deterministic_files(tmp_path: Path) -> None:
    first = mtre_distribution(_runs(), tmp_path / "a" / "mtre")
    _assert_written(first, tmp_path / "a" / "mtre")
    second = mtre_distribution(_runs(), tmp_path / "b" / "mtre")
    for p, q in zip(first, second, strict=True):
        assert p.read_bytes() == q.read_bytes()
    with pytest.raises(ValueError):
        mtre_distribution(_runs().iloc[:0], tmp_path / "empty")


def test_convergence_writes_files(tmp_path: Path) -> None:
    paths = convergence(_trajectories(), tmp_path / "convergence")
    _assert_written(paths, tmp_path / "convergence")


def test_convergence_from_csv_paths(tmp_path: Path) -> None:
    traj = _trajectories()
    paths = []
    for method, group in traj.groupby("method"):
        path = tmp_path / "embedded" / "s0" / "runs" / f"{method}.trajectory.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        group.to_csv(path, index=False)
        paths.append(path)
    loaded = load_trajectories(paths)
    assert set(loaded["dataset"]) == {"embedded"} and len(loaded) == len(traj)
    _assert_written(convergence(paths, tmp_path / "fig"), tmp_path / "fig")
    bad = tmp_path / "bad.trajectory.csv"
    traj.drop(columns="seconds").to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.trajectory\.csv.*seconds"):
        load_trajectories([bad])


def test_interpolate_on_grid_known_curve() -> None:
    seconds = np.array([1.0, 2.0, 4.0])
    values = np.array([10.0, 6.0, 2.0])
    grid = np.array([0.0, 0.5, 1.0, 1.5, 3.0, 4.0, 5.0, 10.0])
    got = interpolate_on_grid(seconds, values, grid)
    np.testing.assert_array_equal(
        np.isnan(got), [True, True, False, False, False, False, False, False]
    )
    np.testing.assert_allclose(got[2:], [10.0, 8.0, 4.0, 2.0, 2.0, 2.0])
    shuffled = interpolate_on_grid(seconds[::-1], values[::-1], grid)
    np.testing.assert_array_equal(np.isnan(shuffled), np.isnan(got))


def test_difference_map_colours_truth_red_estimate_blue_overlap_white() -> None:
    gt = np.zeros((20, 20))
    est = np.zeros((20, 20))
    gt[2:8, 2:8] = 1.0  # truth only
    est[12:18, 12:18] = 1.0  # estimate only
    gt[10, 2:12] = est[10, 2:12] = 1.0  # both
    rgb = difference_map(gt, est)
    assert rgb.shape == (20, 20, 3)
    assert np.allclose(rgb[4, 4], [1, 0, 0])
    assert np.allclose(rgb[15, 15], [0, 0, 1])
    assert np.allclose(rgb[10, 5], [1, 1, 1])
    assert np.allclose(rgb[0, 19], [0, 0, 0])


def _examples(n_xrays: int, methods: list[str]) -> list[dict]:
    yy, xx = np.mgrid[:24, :24]
    xray = np.exp(-((xx - 12.0) ** 2 + (yy - 11.0) ** 2) / 30.0)
    drr = np.exp(-((xx - 13.0) ** 2 + (yy - 12.0) ** 2) / 30.0)
    estimates = [
        {"method": m, "drr_est": drr, "mtre_mm": np.inf if m == "bobyqa" else 0.4} for m in methods
    ]
    return [
        {"xray_id": f"x{i}", "xray": xray, "drr_gt": xray, "estimates": estimates}
        for i in range(n_xrays)
    ]


def test_qualitative_grid_is_at_most_six_panels_across(tmp_path: Path) -> None:
    """Ten methods on three X-rays (the default run) wrap into blocks of five methods plus the
    X-ray column: two rows per block, six panels across, one file."""
    methods = [f"m{i}" for i in range(9)] + ["bobyqa"]
    paths = qualitative_panel(_examples(3, methods), tmp_path / "qual")
    _assert_written(paths, tmp_path / "qual")
    from PIL import Image

    width, height = Image.open(paths[0]).size
    assert width < 2200  # six panels of about 2 inches at 150 dpi, not thirty
    assert height > width  # 3 X-rays x 2 blocks x 2 rows
    with pytest.raises(ValueError, match="no X-rays"):
        qualitative_panel([], tmp_path / "none")


def test_seconds_to_threshold_counts_never_as_slowest():
    """First time below the threshold per X-ray, median over X-rays, never = infinity."""
    traj = pd.DataFrame(
        {
            "xray_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
            "seconds": [0.0, 1.0, 2.0, 0.0, 0.5, 3.0, 0.0, 4.0],
            "mtre_mm": [5.0, 0.8, 0.2, 5.0, 0.9, 0.1, 5.0, 2.0],
        }
    )
    assert seconds_to_threshold(traj, 1.0) == 1.0  # a: 1.0, b: 0.5, c: never
    assert seconds_to_threshold(traj[traj["xray_id"] == "c"], 1.0) == float("inf")
