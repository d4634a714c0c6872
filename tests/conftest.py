"""Shared fixtures: one prepared embedded subject per test session (coarse, for speed), a
tiny synthetic DRR for the projector tests, and a small learned-similarity geometry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from diffdrr.drr import DRR
from snakemake.utils import validate

from regbench.config import SCHEMA
from regbench.data.embedded import embedded_files, prepare_embedded
from regbench.data.prepare import geometry_from_config, resample_and_center
from regbench.data.subject import Prepared, load_prepared
from regbench.data.volumes import read_ct
from regbench.geometry.poses import carm_pose
from regbench.rendering.diffdrr_adapter import make_drr

REPO = Path(__file__).resolve().parents[1]

TINY_GEOMETRY = {
    "sdd": 1020.0,
    "height": 32,
    "width": 32,
    "detector_mm": 400.0,
    "x0": 0.0,
    "y0": 0.0,
    "reverse_x_axis": True,
    "orientation": "AP",
}


def pose_deg(rot_deg=(0.0, 0.0, 0.0), trans=(0.0, 850.0, 0.0)) -> torch.Tensor:
    """(1,4,4) C-arm pose from its angles (degrees) and source offset (mm)."""
    rot = torch.tensor([[math.radians(a) for a in rot_deg]], dtype=torch.float64)
    return carm_pose(rot, torch.tensor([trans], dtype=torch.float64))


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_embedded(spacing_mm=6.0, min_label_voxels=50).write(
        out, geometry_from_config(TINY_GEOMETRY)
    )
    return out


@pytest.fixture(scope="session")
def prepared(prepared_dir: Path) -> Prepared:
    return load_prepared(prepared_dir)


@pytest.fixture(scope="session")
def default_drr() -> tuple[DRR, int]:
    """The default run's DRR (config.yaml: detector, embedded CT spacing) and samples per ray.

    Landmarks are left out: locating them costs far more than the CT, and projector tests
    need the volume only.
    """
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(cfg, str(SCHEMA))  # fills the geometry's defaults
    ct, affine = read_ct(embedded_files()[0])
    spacing = cfg["datasets"]["embedded"]["spacing_mm"]
    subject = resample_and_center(ct, None, affine, pd.DataFrame(columns=["x", "y", "z"]), spacing)
    geometry = geometry_from_config(cfg["geometry"])
    prepared = Prepared(subject.ct, subject.affine, subject.landmarks, geometry)
    return make_drr(prepared, cfg["render"]["bone_attenuation"]), int(cfg["render"]["n_points"])


@pytest.fixture(scope="session")
def tiny_drr() -> DRR:
    """A diffdrr DRR: 16x16 detector over a smooth positive 10x12x9 volume (10 mm voxels)
    centred on the isocentre."""
    shape = (10, 12, 9)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    ct = 400 * np.exp(-2 * (grid**2).sum(0)) * (1.2 + np.sin(3 * grid[0]) * np.cos(2 * grid[2]))
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = -5.0 * (np.array(shape) - 1)
    geometry = {
        "sdd": 1020.0,
        "height": 16,
        "width": 16,
        "delx": 12.0,
        "dely": 12.0,
        "x0": 0.0,
        "y0": 0.0,
        "reverse_x_axis": True,
        "orientation": "AP",
    }
    return make_drr(Prepared(ct.astype(np.float32), affine, pd.DataFrame(), geometry), 1.0)


@pytest.fixture(scope="session")
def similarity_settings() -> dict:
    """A 32 px learned-similarity config (validated, defaults filled)."""
    s = {
        "seed": 0,
        "geometry": {"height": 32, "width": 32},
        "render": {"n_points": 48},
        "similarity": {"patch_px": 5, "crop_px": 1, "channels": 2},
    }
    validate(s, str(SCHEMA))
    return s


@pytest.fixture(scope="session")
def similarity_setup(prepared: Prepared, similarity_settings: dict):
    from regbench.models.similarity import SimilarityGeometry

    return SimilarityGeometry(prepared, similarity_settings, "cpu")
