"""The prepared subject as every stage after ``prepare`` reads it: CT, landmarks, detector.

Why a module of its own: rendering, training and registration all consume this contract, so it
sits below them and depends on nothing but the data readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from regbench.data.landmarks import landmark_array, read_landmarks
from regbench.data.volumes import read_ct
from regbench.errors import InputError

GEOMETRY_KEYS = ("sdd", "height", "width", "delx", "dely", "x0", "y0", "reverse_x_axis")


@dataclass
class Prepared:
    """A prepared subject as every later stage sees it."""

    ct: np.ndarray
    affine: np.ndarray
    landmarks: pd.DataFrame
    geometry: dict

    @property
    def points(self) -> np.ndarray:
        return landmark_array(self.landmarks)


def read_geometry(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"geometry file not found: {path}")
    try:
        geometry = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"geometry file {path} is not valid JSON: {exc}") from exc
    missing = [k for k in GEOMETRY_KEYS if k not in geometry]
    if missing:
        raise InputError(f"geometry file {path}: missing keys {missing}")
    for key in ("sdd", "delx", "dely", "height", "width"):
        if not float(geometry[key]) > 0:
            raise InputError(f"geometry file {path}: '{key}' must be positive")
    geometry.setdefault("orientation", "AP")
    return geometry


def load_prepared(prepared_dir: str | Path) -> Prepared:
    d = Path(prepared_dir)
    ct, affine = read_ct(d / "ct.nii.gz")
    landmarks = read_landmarks(d / "landmarks.csv", affine, ct.shape)
    return Prepared(ct, affine, landmarks, read_geometry(d / "geometry.json"))
