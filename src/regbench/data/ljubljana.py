"""Ljubljana 3D/2D cerebral angiograms (Mitrovic et al., TMI 2013) as packaged in ``ljubljana.h5``.

HDF5 layout (as read by diffdrrdata 0.0.7 ``ljubljana.py``, DiffPose ``diffpose/ljubljana.py``
and xvr's DICOM conversion script)::

    subject01 ... subject10/
        volume/pixels (X,Y,Z)   3D-DSA intensities (not HU)
        volume/spacing (3,)  volume/origin (3,)
        points (N,3)            fiducial points on the vessel centrelines, world mm
        proj-ap/, proj-lat/     (also proj-ap-max, proj-lat-max)
            pixels (rows, cols)  intrinsic (3,3)  extrinsic (4,4, world -> camera)
            row-spacing  col-spacing

Camera: the DeepFluoro/xReg convention (negative focal lengths, detector at z = -f): diffdrrdata
applies DeepFluoro's ``flip_z`` to both datasets and xvr takes ``sdd = -K[0,0] * col-spacing``.
So the camera-to-world transform is ``inv(extrinsic)`` and the conversion to regbench's pose is
:func:`regbench.data.deepfluoro.regbench_pose` (see that module for the derivation).

Per-view intrinsics: AP and LAT have their own intrinsic matrix, pixel spacing and image size.
regbench therefore treats each (patient, view) as one subject, ``subject01-ap``,
``subject01-lat``, ... with its own ``geometry.json`` and a one-image ``XraySet`` (the same
split as DiffPose, which trains one model per patient and view); the CT and landmarks of the two
views of a patient are identical.

Volume: diffdrrdata reverses the stored array along its first (x) axis and keeps the affine
``diag(spacing) + origin``; regbench does the same (the stored array is mirrored with respect to
the frame of the extrinsics and points; this is taken from diffdrrdata/xvr, which render this
file). Voxels below 1000 are set to 0 (diffdrrdata) to remove the DSA background; the prepared
"CT" therefore holds 3D-DSA intensities, not HU. The world frame is the file's, centred.

Images (diffdrrdata): subtract the background (mode of the per-row modes), clip to [-1, 0], add
2, and take ``log(max) - log(I)``; then optional antialiased downsampling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench.data.custom import downsample, translate
from regbench.data.datasets.ljubljana import split_subject
from regbench.data.deepfluoro import (
    h5_array,
    h5_get,
    h5_scalar,
    open_h5,
    pinhole_geometry,
    regbench_pose,
)
from regbench.data.prepare import PreparedSubject, resample_and_center
from regbench.data.xrays import XraySet
from regbench.errors import InputError
from regbench.geometry.poses import check_rigid

VIEWS = ("ap", "lat")
DSA_THRESHOLD = 1000.0


def list_subjects(h5_path: str | Path, views: tuple[str, ...] = VIEWS) -> list[str]:
    """``<patient>-<view>`` for every patient group and each of ``views`` it holds."""
    with open_h5(h5_path, "Ljubljana") as f:
        return [
            f"{patient}-{view}"
            for patient in sorted(f.keys())
            for view in views
            if f"proj-{view}" in f[patient]
        ]


def preprocess_image(img: np.ndarray) -> torch.Tensor:
    """Raw DSA frame (H,W) -> (1,1,H,W) line-integral-like image (diffdrrdata's recipe)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))
    background = t.mode(dim=-1).values.mode().values
    t = torch.clamp(t - background, -1.0, 0.0) + 2.0
    return (t.max().log() - t.log())[None, None]


def prepare_ljubljana(
    h5_path: str | Path,
    subject: str,
    spacing_mm: float | None,
    height: int | None = None,
    *,
    dsa_threshold: float | None = DSA_THRESHOLD,
    border_px: int = 0,
) -> tuple[PreparedSubject, XraySet, dict]:
    """One patient and view (``subject01-ap``): prepared 3D-DSA, fiducials, and its X-ray.

    ``spacing_mm=None`` keeps the file's voxel grid. Returns the prepared subject (file's world
    frame, centred; landmarks ``point00`` ... from
    ``points``), a one-image ``XraySet`` (id = the view) with the ground-truth pose in regbench's
    convention, and this view's detector geometry after downsampling to ``height`` rows.
    """
    patient, view = split_subject(subject)
    with open_h5(h5_path, "Ljubljana") as f:
        if patient not in f:
            raise InputError(f"{f.filename}: no patient {patient!r} (have {sorted(f.keys())})")
        group = f[patient]
        if f"proj-{view}" not in group:
            raise InputError(f"{f.filename}: {patient} has no view {view!r} (group proj-{view})")

        volume = np.asarray(h5_get(group, "volume/pixels")[()], dtype=np.float32)
        if volume.ndim != 3:
            raise InputError(f"{f.filename}: {patient}/volume/pixels is not 3-D ({volume.shape})")
        volume = np.ascontiguousarray(volume[::-1])  # diffdrrdata: flip(1) of (1,X,Y,Z)
        if dsa_threshold is not None:
            volume[volume < dsa_threshold] = 0.0
        affine = np.eye(4)
        affine[:3, :3] = np.diag(h5_array(group, "volume/spacing").reshape(3))
        affine[:3, 3] = h5_array(group, "volume/origin").reshape(3)

        points = h5_array(group, "points").reshape(-1, 3)
        width = max(2, len(str(len(points) - 1)))
        landmarks = pd.DataFrame(
            {
                "name": [f"point{i:0{width}d}" for i in range(len(points))],
                "x": points[:, 0],
                "y": points[:, 1],
                "z": points[:, 2],
            }
        )
        prepared = resample_and_center(volume, None, affine, landmarks, spacing_mm)

        proj = group[f"proj-{view}"]
        img = h5_array(proj, "pixels")
        if img.ndim != 2:
            raise InputError(f"{f.filename}: {proj.name}/pixels is not a 2-D image ({img.shape})")
        geometry = pinhole_geometry(
            h5_array(proj, "intrinsic").reshape(3, 3),
            img.shape[0],
            img.shape[1],
            h5_scalar(proj, "row-spacing"),
            h5_scalar(proj, "col-spacing"),
        )
        extrinsic = h5_array(proj, "extrinsic").reshape(4, 4)
        pose = regbench_pose(translate(-prepared.shift_mm) @ np.linalg.inv(extrinsic))
        check_rigid(pose, f"{f.filename}: {proj.name}/extrinsic")

    image, geometry = downsample(preprocess_image(img).to(torch.float32), geometry, height)
    xrays = XraySet(
        ids=[view],
        images=image,
        poses=torch.from_numpy(pose)[None],
        geometry=geometry,
        border_px=int(border_px),
    )
    return prepared, xrays, geometry
