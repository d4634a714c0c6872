"""The backbone study (the paper's Figure 4, left): its stopping criterion, table and figure."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from regbench import figures, tables
from regbench.errors import InputError
from regbench.train.backbone_study import Pool, loss_std, train_backbone

PRIOR = {
    "rotation_deg_mean": [0.0, 0.0, 0.0],
    "rotation_deg_std": [4.0, 4.0, 4.0],
    "translation_mm_mean": [0.0, 850.0, 0.0],
    "translation_mm_std": [8.0, 20.0, 8.0],
}


def settings(threshold: float, max_steps: int, batch_size: int = 4) -> dict:
    study = {
        "window_epochs": 2,
        "loss_std_threshold": threshold,
        "batch_size": batch_size,
        "max_steps": max_steps,
    }
    return {
        "prior": PRIOR,
        "regressor": {"lr": 1e-3, "weight_decay": 1e-4},
        "backbone_study": study,
    }


@pytest.fixture(scope="module")
def pool() -> Pool:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 32, 32, generator=generator)
    return Pool(
        images, torch.zeros(8, 3, dtype=torch.float64), torch.zeros(8, 3, dtype=torch.float64)
    )


def test_loss_std_over_the_window():
    assert math.isnan(loss_std([1.0], 2))
    assert loss_std([5.0, 1.0, 1.0], 2) == 0.0
    assert loss_std([9.0, 0.0, 2.0], 2) == pytest.approx(1.0)


def test_training_stops_when_the_loss_settles(pool):
    """Any std passes a huge threshold: the criterion is met as soon as the window is full."""
    _, info = train_backbone("resnet18", pool, settings(1e9, 100), 0, torch.device("cpu"))
    assert info["settled"] and info["epochs"] == 2 and info["steps"] == 2 * (8 // 4)
    assert info["loss_std"] >= 0 and info["train_seconds"] > 0


def test_training_stops_at_the_step_cap(pool):
    _, info = train_backbone("resnet18", pool, settings(1e-30, 5), 0, torch.device("cpu"))
    assert not info["settled"] and info["steps"] == 5 and info["epochs"] == 3


def test_a_batch_larger_than_the_pool_names_the_key(pool):
    with pytest.raises(InputError, match="backbone_study.batch_size"):
        train_backbone("resnet18", pool, settings(1e-4, 5, batch_size=9), 0, torch.device("cpu"))


def study_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["embedded"] * 2,
            "subject": ["chest"] * 2,
            "backbone": ["resnet18", "convnext_atto"],
            "parameters_m": [11.2, 3.4],
            "epochs": [12, 15],
            "steps": [96, 120],
            "settled": [True, False],
            "loss_std": [9.5e-5, 2.1e-3],
            "train_seconds": [40.0, 25.0],
            "mtre_median_mm": [6.5, 9.1],
            "mtre_mean_mm": [7.0, 10.2],
        }
    )


def test_backbone_table_and_figure(tmp_path):
    table = tables.backbone_table(study_frame())
    assert list(table["Loss settled"]) == ["yes", "no (step cap)"]
    md = tables.to_markdown(tables.format_table(table))
    assert "9.5e-05" in md and "| 96 |" in md and "resnet18" in md
    with pytest.raises(InputError, match="loss_std"):
        tables.backbone_table(study_frame().drop(columns="loss_std"))
    paths = figures.backbone_figure(study_frame(), tmp_path / "backbones")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(
        p.stat().st_size > 0 for p in paths
    )
