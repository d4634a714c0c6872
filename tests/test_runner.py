"""A diverging or crashing registration is a failed row, never a NaN pose or a lost X-ray."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from regbench import runner, tables
from regbench.data.xrays import XraySet
from regbench.geometry.poses import carm_pose
from regbench.methods.base import Context, Method


class FixedRegressor:
    """Initial pose: the ground truth moved 3 mm along x (a known initial mTRE)."""

    def __init__(self, pose: torch.Tensor):
        self.pose = pose

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.pose[None].float()


class Diverging(Method):
    """Refines X-ray ``good`` back to the truth; every other X-ray diverges or raises."""

    name = "diverging"

    def __init__(self, context, truth, behaviour):
        super().__init__(context)
        self.truth, self.behaviour, self.calls = truth, behaviour, 0

    def refine(self, image, init, trace):
        kind = self.behaviour[self.calls]
        self.calls += 1
        if kind == "raise":
            raise RuntimeError("singular normal equations")
        if kind == "nan":
            return torch.full((4, 4), math.nan, dtype=torch.float64), 7
        return self.truth, 3


def test_nan_and_raising_refiners_give_failed_rows_counted_as_failures(prepared, monkeypatch):
    truth = carm_pose(torch.zeros(1, 3).double(), torch.tensor([[0.0, 850.0, 0.0]]).double())[0]
    init = truth.clone()
    init[0, 3] += 3.0
    on_cpu = SimpleNamespace(device=torch.device("cpu"))  # no rendering needed
    context = Context(renderer=on_cpu, regressor=FixedRegressor(init), n_points=8, settings={})
    method = Diverging(context, truth, ["ok", "nan", "raise"])
    monkeypatch.setattr(runner, "build_method", lambda name, ctx: method)
    xrays = XraySet(
        ids=["a", "b", "c"],
        images=torch.zeros(3, 1, 8, 8),
        poses=truth[None].repeat(3, 1, 1),
        geometry=prepared.geometry,
    )
    runs, trajectory = runner.register_all("diverging", prepared, xrays, context)

    assert runs["status"].tolist() == ["ok", "failed", "failed"]
    assert len(runs) == 3 and set(trajectory["xray_id"]) == {"a", "b", "c"}
    # No NaN pose is returned: a diverged refinement falls back to the (finite) initial pose.
    nan_row = runs.iloc[1]
    est = nan_row[runner.matrix_columns("est")].to_numpy(float).reshape(4, 4)
    assert np.array_equal(est, init.numpy())
    assert nan_row["mtre_mm"] == np.float64(nan_row["mtre_init_mm"]) and nan_row["mtre_mm"] > 2.9
    assert runs.iloc[0]["mtre_mm"] < 1e-9

    # In the table the two failures count against SMSR although the good run is exact.
    summary = tables.summary_row(runs, "d", "diverging", n_boot=10)
    assert summary["Failed"] == 2 and summary["N"] == 3
    assert summary["SMSR (%)"] == pytest.approx(100 / 3)
