"""DICOM input for single registrations: an X-ray with its geometry from the standard tags, and a
CT series folder as a volume in NIfTI's RAS world frame.

Why a reader of its own: a user's X-ray from a C-arm carries its projection geometry in its
header, and asking for it by hand is where single-image registrations usually go wrong. Every
value that comes from a tag can be given on the command line instead; a tag that is missing
when no value was given is an error naming the tag and the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regbench.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom")
# (keyword, tag, option of `regbench register-image` that supplies the value instead)
SDD_TAG = ("DistanceSourceToDetector", "(0018,1110)", "--sdd")
SOURCE_TAG = ("DistanceSourceToPatient", "(0018,1111)", "--source-distance")
SPACING_TAG = ("ImagerPixelSpacing", "(0018,1164)", "--pixel-spacing")
PRIMARY_TAG = ("PositionerPrimaryAngle", "(0018,1510)", "--angles")
SECONDARY_TAG = ("PositionerSecondaryAngle", "(0018,1511)", "--angles")


@dataclass
class XrayView:
    """One X-ray and what its header says about how it was taken."""

    image: np.ndarray  # (H, W) float64, dense = bright (line integrals, like a DRR)
    sdd_mm: float | None  # source-to-detector distance
    pixel_mm: tuple[float, float] | None  # (row spacing, column spacing) at the detector
    source_mm: float | None  # source-to-isocentre distance (the initial view)
    angles_deg: tuple[float, float] | None  # positioner primary (LAO+/RAO-), secondary (CRA+/CAU-)


def is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the ``DICM`` magic at byte 128 (files exported without one)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _dataset(path: Path, what: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise InputError(f"{what} {path} is not a readable DICOM file: {exc}") from exc


def _pixels(ds, path: Path, what: str) -> np.ndarray:
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # pydicom raises many types for missing/compressed pixel data
        raise InputError(f"{what} {path}: cannot decode its pixel data: {exc}") from exc
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return arr * slope + intercept


def _number(ds, tag: tuple[str, str, str], count: int = 1):
    value = getattr(ds, tag[0], None)
    if value is None or value == "":
        return None
    values = [float(v) for v in (value if count > 1 else [value])]
    return values if count > 1 else values[0]


def read_dicom_xray(path: str | Path) -> XrayView:
    """The X-ray's pixels (rescaled; MONOCHROME1 inverted so that dense is bright) and the
    geometry tags it carries (``None`` where a tag is absent)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"X-ray file not found: {path}")
    ds = _dataset(path, "X-ray")
    image = _pixels(ds, path, "X-ray")
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise InputError(f"X-ray {path}: need one 2-D frame, got pixel data of shape {image.shape}")
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = image.max() - image
    spacing = _number(ds, SPACING_TAG, count=2)
    primary, secondary = _number(ds, PRIMARY_TAG), _number(ds, SECONDARY_TAG)
    return XrayView(
        image=image,
        sdd_mm=_number(ds, SDD_TAG),
        pixel_mm=None if spacing is None else (spacing[0], spacing[1]),
        source_mm=_number(ds, SOURCE_TAG),
        angles_deg=None if primary is None or secondary is None else (primary, secondary),
    )


def missing_tag(path: Path, tag: tuple[str, str, str], meaning: str) -> InputError:
    keyword, number, option = tag
    return InputError(
        f"X-ray {path}: DICOM tag {keyword} {number} is missing; pass {option} ({meaning})"
    )


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A CT series folder -> (HU volume (X, Y, Z) float32, 4x4 voxel-to-world affine in RAS mm).

    Slices are ordered along the normal of their common orientation by ImagePositionPatient;
    DICOM's patient frame is LPS, so x and y are negated to NIfTI's RAS.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom(p))
    if len(files) < 2:
        raise InputError(f"CT series {folder}: need at least 2 DICOM slices, found {len(files)}")
    slices = [_dataset(p, "CT slice") for p in files]
    for p, ds in zip(files, slices, strict=True):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if getattr(ds, keyword, None) is None:
                raise InputError(f"CT slice {p}: DICOM tag {keyword} is missing")
    orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in slices])
    order = np.argsort(positions @ normal)
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if (np.abs(steps) < 1e-6).any():
        raise InputError(f"CT series {folder}: two slices share one position")
    if np.ptp(steps) > 1e-3 * max(abs(steps.mean()), 1e-6) + 1e-3:
        raise InputError(f"CT series {folder}: slices are not evenly spaced ({steps.min():.3f}-"
                         f"{steps.max():.3f} mm)")  # fmt: skip
    ordered = [slices[i] for i in order]
    planes = [_pixels(ds, files[i], "CT slice") for i, ds in zip(order, ordered, strict=True)]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise InputError(f"CT series {folder}: slices of different sizes {sorted(shapes)}")
    # pixel_array is (rows, columns): row index moves along col_dir, column index along row_dir.
    volume = np.stack([p.T for p in planes], axis=-1).astype(np.float32)  # (columns, rows, slices)
    row_mm, col_mm = (float(v) for v in ordered[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm
    lps[:3, 1] = col_dir * row_mm
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    if not np.isfinite(volume).all():
        raise InputError(f"CT series {folder}: non-finite voxel values")
    return volume, affine
