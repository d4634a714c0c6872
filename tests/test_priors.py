"""Pose priors per dataset and per view: layering, z-scores, schema errors, the paper config."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from configs import paper_config
from conftest import REPO, SCHEMA
from snakemake.utils import validate

from regbench.config import subject_prior
from regbench.data.datasets import resolve_prior
from regbench.errors import InputError
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior, prior_zscores

GLOBAL = {
    "rotation_deg_mean": [0.0, 0.0, 0.0],
    "rotation_deg_std": [4.0, 4.0, 4.0],
    "translation_mm_mean": [0.0, 850.0, 0.0],
    "translation_mm_std": [8.0, 20.0, 8.0],
}


def test_layers_global_then_dataset_then_view():
    spec = {
        "prior": {"translation_mm_mean": [0.0, 750.0, 0.0]},
        "view_priors": {"lat": {"rotation_deg_mean": [90.0, 0.0, 0.0]}},
    }
    ap = subject_prior(GLOBAL, spec, "ap")
    lat = subject_prior(GLOBAL, spec, "lat")
    assert ap["rotation_deg_mean"] == [0.0, 0.0, 0.0] and lat["rotation_deg_mean"][0] == 90.0
    assert ap["translation_mm_mean"] == lat["translation_mm_mean"] == [0.0, 750.0, 0.0]
    assert ap["rotation_deg_std"] == GLOBAL["rotation_deg_std"]
    assert subject_prior(GLOBAL, {}, None) == GLOBAL
    with pytest.raises(ValueError, match="bogus"):
        subject_prior(GLOBAL, {"prior": {"bogus": [1, 2, 3]}})
    with pytest.raises(InputError, match="datasets.deepfluoro.prior"):
        resolve_prior(
            {"prior": GLOBAL, "datasets": {"deepfluoro": {"prior": {"x": 1}}}},
            "deepfluoro",
            "specimen1",
        )


def test_zscores_wrap_angles_and_measure_the_offset():
    prior = PosePrior((180.0, 0.0, 0.0), (10.0, 10.0, 10.0), (0.0, 700.0, 0.0), (10.0, 10.0, 10.0))
    rot = torch.tensor([[math.radians(-175.0), 0.0, 0.0]], dtype=torch.float64)
    z = prior_zscores(prior, carm_pose(rot, torch.tensor([[0.0, 720.0, 5.0]], dtype=torch.float64)))
    assert z[0].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, 2.0, 0.5], abs=1e-6)


def test_paper_priors_per_dataset_and_view():
    cfg = paper_config()
    df = resolve_prior(cfg, "deepfluoro", "specimen3")
    assert df["rotation_deg_mean"][0] == 180.0  # posterior source
    ap, lat = (resolve_prior(cfg, "ljubljana", f"subject02-{v}") for v in ("ap", "lat"))
    assert ap["rotation_deg_mean"][0] == 0.0 and lat["rotation_deg_mean"][0] == 90.0
    assert ap["translation_mm_mean"] == lat["translation_mm_mean"]
    assert resolve_prior(cfg, "ctspine1k", "liver_0") == cfg["prior"]  # simulated: the default
    assert cfg["datasets"]["ljubljana"]["spacing_mm"] is None  # native voxel grid
    assert cfg["datasets"]["deepfluoro"]["render_labels"] == [1, 2, 3, 4, 7]


@pytest.mark.parametrize(
    "dataset, block, message",
    [
        ("deepfluoro", {"prior": {"rotation_deg_mean": [180, 0]}}, r"\['deepfluoro'\]\['prior'\]"),
        ("deepfluoro", {"prior": {"rotation_std": [1, 1, 1]}}, "'rotation_std' was unexpected"),
        ("ljubljana", {"view_priors": {"pa": {}}}, "'pa' was unexpected"),
        ("ljubljana", {"view_priors": {"lat": {"translation_mm_std": [-1, 0, 0]}}}, "lat"),
    ],
)
def test_malformed_prior_names_dataset_and_key(dataset, block, message):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"][dataset] = block
    with pytest.raises(Exception, match=message):
        validate(cfg, str(SCHEMA))
