"""Figures are written (png + pdf), deterministically, from tiny synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.figures import (
    convergence,
    edge_overlay,
    edges,
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


def test_edges_find_a_square() -> None:
    image = np.zeros((32, 32))
    image[8:24, 8:24] = 1.0
    found = edges(image, quantile=0.8)
    assert found.dtype == bool and found.any()
    assert found[8, 16] and found[16, 8]  # on the boundary
    assert not found[16, 16] and not found[0, 0]  # inside and far outside
    assert not edges(np.ones((8, 8))).any()


def test_qualitative_panel_writes_files(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:24, :24]
    xray = np.exp(-((xx - 12.0) ** 2 + (yy - 11.0) ** 2) / 30.0)
    drr = np.exp(-((xx - 13.0) ** 2 + (yy - 12.0) ** 2) / 30.0)
    panels = [
        dict(xray_id=f"x{i}", method=m, xray=xray, drr_est=drr, edges_gt=edges(xray),
             edges_est=edges(drr), mtre_mm=mtre)
        for i, (m, mtre) in enumerate((("posenet", 12.3), ("ours-so4", 0.4), ("bobyqa", np.inf)))
    ]  # fmt: skip
    _assert_written(qualitative_panel(panels, tmp_path / "qual"), tmp_path / "qual")
    rgb = edge_overlay(xray, panels[0]["edges_gt"], np.zeros_like(xray, dtype=bool))
    assert rgb.shape == (24, 24, 3)
    assert np.allclose(rgb[panels[0]["edges_gt"]], [0.85, 0.1, 0.1])


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
