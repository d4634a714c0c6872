"""Landmarks: named 3-D points in world mm, the ground truth of every mTRE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from regbench.data.volumes import voxel_to_world, world_to_voxel
from regbench.errors import InputError
from regbench.io import numeric, read_table, write_csv

MIN_LANDMARKS = 4
COLUMNS = ["name", "x", "y", "z"]


def label_centroids(
    mask: np.ndarray,
    affine: np.ndarray,
    names: dict[int, str],
    min_voxels: int,
) -> pd.DataFrame:
    """Centroids (world mm) of the labels in ``names`` that are present and not cut by the FOV.

    A label touching the volume border is cut by the field of view, so its centroid is not that
    of the anatomical structure; such labels and tiny ones are skipped.
    """
    labels = np.asarray(mask)
    if not np.issubdtype(labels.dtype, np.integer):
        labels = np.rint(labels).astype(np.int64)
    # One pass over the volume for all labels (a per-label np.argwhere took ~45 s on the
    # full-resolution chest mask).
    counts = np.bincount(labels.ravel().clip(min=0))
    boxes = ndimage.find_objects(labels.clip(min=0))
    upper = np.asarray(labels.shape) - 1
    kept = []
    for label, name in sorted(names.items()):
        if label <= 0 or label >= len(counts) or counts[label] < min_voxels:
            continue
        box = boxes[label - 1]
        lo = np.array([b.start for b in box])
        hi = np.array([b.stop - 1 for b in box])
        if (lo == 0).any() or (hi == upper).any():
            continue
        kept.append((label, name))
    if not kept:
        return pd.DataFrame([], columns=COLUMNS)
    centres = [_centroid(labels, label, boxes[label - 1]) for label, _ in kept]
    world = voxel_to_world(affine, np.asarray(centres, dtype=float))
    rows = [
        {"name": name, "x": p[0], "y": p[1], "z": p[2]}
        for (_, name), p in zip(kept, world, strict=True)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _centroid(labels: np.ndarray, label: int, box: tuple[slice, ...]) -> np.ndarray:
    """Voxel centroid of one label from its bounding box only (ndimage.center_of_mass makes a
    pass over the whole volume per coordinate: ~10 s of the chest's preparation). The sum of
    voxel indices is an exact integer divided once, so it is the same float as
    center_of_mass's."""
    local = np.argwhere(labels[box] == label)
    start = np.array([b.start for b in box], dtype=np.int64)
    return (local.sum(axis=0) + len(local) * start) / float(len(local))


def write_landmarks(df: pd.DataFrame, path: str | Path) -> None:
    check_landmarks(df, path)
    write_csv(df[COLUMNS], path)


def check_landmarks(df: pd.DataFrame, path: str | Path) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"landmarks {path}: missing columns {missing} (need {COLUMNS})")
    if len(df) < MIN_LANDMARKS:
        raise InputError(
            f"landmarks {path}: {len(df)} landmarks, at least {MIN_LANDMARKS} are needed"
        )
    bad = ~np.isfinite(numeric(df, ["x", "y", "z"])).all(axis=1)
    if bad.any():
        names = df.loc[bad, "name"].tolist()
        raise InputError(f"landmarks {path}: non-numeric or non-finite coordinates of {names}")


def read_landmarks(
    path: str | Path, affine: np.ndarray | None = None, shape: tuple[int, ...] | None = None
) -> pd.DataFrame:
    """Read ``name,x,y,z``; with ``affine``/``shape`` also require every point inside the CT."""
    df = read_table(path, "landmarks", COLUMNS)
    check_landmarks(df, path)
    df[["x", "y", "z"]] = numeric(df, ["x", "y", "z"])
    if affine is not None and shape is not None:
        ijk = world_to_voxel(affine, df[["x", "y", "z"]].to_numpy())
        outside = ((ijk < -0.5) | (ijk > np.asarray(shape[:3]) - 0.5)).any(axis=1)
        if outside.any():
            names = df.loc[outside, "name"].tolist()
            raise InputError(f"landmarks {path}: outside the CT volume: {names}")
    return df


def landmark_array(df: pd.DataFrame) -> np.ndarray:
    return df[["x", "y", "z"]].to_numpy(dtype=np.float64)
