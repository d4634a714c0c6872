"""Shared fixtures: one prepared embedded subject per test session (coarse, for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from regbench.data.embedded import prepare_embedded
from regbench.data.prepare import geometry_from_config
from regbench.render import Prepared, load_prepared

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

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
