"""Reading and checking CT volumes: a bad volume must fail loudly, naming its file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from regbench.errors import InputError


def read_volume(path: str | Path, what: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    """Load a 3-D NIfTI as (float32 array, 4x4 affine), refusing anything a CT cannot be."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        pixdim = _stored_pixdim(img)
    except (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
    ) as exc:
        raise InputError(f"{what} file {path} is not a readable NIfTI volume: {exc}") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what} file {path} must be a 3-D volume, got shape {data.shape}")
    if min(data.shape) < 2:
        raise InputError(f"{what} file {path} has a degenerate shape {data.shape}")
    if pixdim is not None and not (np.isfinite(pixdim) & (pixdim > 0)).all():
        raise InputError(
            f"{what} file {path}: voxel spacing (NIfTI pixdim[1:4]) is {pixdim.tolist()}, "
            "it must be positive"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or (spacing <= 0).any() or abs(np.linalg.det(affine)) < 1e-9:
        raise InputError(f"{what} file {path} has an invalid voxel spacing/affine: {spacing}")
    return data, affine


def _stored_pixdim(img: nib.filebasedimages.FileBasedImage) -> np.ndarray | None:
    """The voxel spacing as written in a NIfTI/Analyze header (``None`` for other formats).

    nibabel silently repairs a zero spacing to 1 mm and a negative one to its absolute value
    when it loads a header, so the stored values are read again without that repair.
    """
    from nibabel.openers import ImageOpener

    header = img.header
    if not isinstance(header, nib.analyze.AnalyzeHeader):
        return None
    holder = img.file_map.get("header") or img.file_map["image"]
    with ImageOpener(holder.filename) as f:
        stored = type(header).from_fileobj(f, check=False)
    return np.asarray(stored["pixdim"][1:4], dtype=np.float64)


def check_ct_values(data: np.ndarray, path: str | Path) -> None:
    """A CT must be finite and not constant."""
    if not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(f"CT file {path} contains {n} NaN or infinite voxels")
    if float(data.max()) == float(data.min()):
        raise InputError(f"CT file {path} is constant ({float(data.min())}): nothing to register")


def read_ct(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    data, affine = read_volume(path, "CT")
    check_ct_values(data, path)
    return data, affine


def read_mask(path: str | Path, ct_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Load an integer label map that must sit on the CT's voxel grid."""
    data, affine = read_volume(path, "mask")
    if data.shape != tuple(ct_shape):
        raise InputError(f"mask file {path} has shape {data.shape}, but the CT has {ct_shape}")
    return np.rint(data).astype(np.int32), affine


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """(K,3) voxel indices -> (K,3) world mm."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return np.asarray(xyz, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def volume_center(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World position of the centre of the voxel grid."""
    return voxel_to_world(affine, (np.asarray(shape[:3], dtype=np.float64) - 1) / 2)


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    from regbench.io import atomic_path

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def to_ras(ct: np.ndarray, mask: np.ndarray | None, affine: np.ndarray):
    """Reorder/flip voxel axes so they run along R, A, S (the world frame is unchanged)."""
    from nibabel import orientations as ornt

    current = ornt.io_orientation(affine)
    change = ornt.ornt_transform(current, ornt.axcodes2ornt("RAS"))
    new_affine = affine @ ornt.inv_ornt_aff(change, ct.shape)
    new_ct = np.ascontiguousarray(ornt.apply_orientation(ct, change), dtype=np.float32)
    new_mask = None if mask is None else np.ascontiguousarray(ornt.apply_orientation(mask, change))
    return new_ct, new_mask, new_affine
