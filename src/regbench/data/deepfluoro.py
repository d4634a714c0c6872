"""DeepFluoro (Grupp et al., IPCAI 2020): ``ipcai_2020_full_res_data.h5`` -> prepared subjects.

HDF5 layout (rg2/DeepFluoroLabeling-IPCAI2020, ``hdf5_layouts/Readme.md``; read the same way by
diffdrrdata 0.0.7 ``deepfluoro.py`` and DiffPose ``diffpose/deepfluoro.py``)::

    proj-params/intrinsic (3,3)  extrinsic (4,4)  num-rows  num-cols
               pixel-row-spacing  pixel-col-spacing            (shared by all projections)
    <specimen>/vol/{pixels (Z,Y,X) HU, spacing (3,1), origin (3,1), dir-mat (3,3)}  ITK image, LPS
    <specimen>/vol-seg/image/{pixels, ...}  vol-seg/labels-def/<N>      CT segmentation
    <specimen>/vol-landmarks/<name> (3,1)                               14 landmarks, LPS mm
    <specimen>/projections/<NNN>/image/pixels (rows, cols)              raw detector intensities
    <specimen>/projections/<NNN>/gt-poses/cam-to-pelvis-vol (4,4)
    <specimen>/projections/<NNN>/rot-180-for-up                         0/1

Specimen groups are named "17-1882", ...; regbench calls them ``specimen1`` ... ``specimen6`` in
DiffPose's order (:data:`SPECIMENS`), and projection ids are the HDF5 keys ("000", ...).

Camera ("xReg") frame, per the layout Readme: origin at the X-ray source, X along increasing
columns, Y along increasing rows, Z towards the source, so the detector lies at z = -f and the
intrinsic matrix has negative focal lengths (-5257.73 px = -1020 mm / 0.194 mm, principal point
767.5 = (1536 - 1) / 2, i.e. pixel centres at integer indices). ``extrinsic`` maps the C-arm world
frame to that camera frame and ``cam-to-pelvis-vol`` the C-arm world frame to the CT's LPS frame,
so a CT point ``p`` projects to ``K @ extrinsic @ inv(cam-to-pelvis-vol) @ p`` and the camera-to-CT
transform is ``cam-to-pelvis-vol @ inv(extrinsic)``.

Conversion to regbench (see ``regbench.geometry.poses``): the prepared CT's world is RAS
(``diag(-1,-1,1)`` of LPS, which is also the ``rot_180`` that diffdrrdata applies), centred by
``resample_and_center``; diffdrr's camera is mapped to the xReg camera by the proper rotation
``diag(1,-1,-1)`` and the detector is built with ``reverse_x_axis=False`` (diffdrrdata instead uses
the reflection ``diag(-1,-1,-1)`` with ``reverse_x_axis=True``: the same rays, but a pose with
determinant -1, which regbench refuses); the result is right-multiplied by the inverse of
diffdrr's fixed ``reorient`` ("AP"). ``rot-180-for-up`` rotates the image by 180 degrees and the
camera by 180 degrees about its principal axis (exact because the principal point is centred).

Images (DiffPose/diffdrrdata ``preprocess``): crop the 50 px collimator border, Gaussian blur
(5x5, sigma 1 px), line integral ``log(65487) - log(I)``, then optional antialiased downsampling.
The xReg sample code also shifts ``cam-to-pelvis-vol`` by -0.5 mm (a texture-indexing fix of its
own ray caster); diffdrrdata and DiffPose do not, nor does regbench.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from regbench.data.custom import downsample, translate
from regbench.data.datasets.deepfluoro import SPECIMENS
from regbench.data.prepare import PreparedSubject, resample_and_center
from regbench.data.xrays import XraySet
from regbench.errors import InputError
from regbench.geometry.poses import check_rigid

INITIAL_ENERGY = 65487.0  # I0 of DiffPose's log transform
COLLIMATOR_CROP_PX = 50  # 1536 -> 1436, as DiffPose's center_crop
ORIENTATION = "AP"
# Segmentation labels of the pelvis (left/right hemipelvis, vertebrae, upper sacrum: what xvr
# renders for DeepFluoro); the femurs (5, 6) move between views and are not part of the pose.
PELVIS_LABELS = (1, 2, 3, 4, 7)
AIR_HU = -1000.0

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# diffdrr camera (detector at +z, reverse_x_axis=False) -> xReg camera (detector at -z).
DIFFDRR_TO_XREG = np.diag([1.0, -1.0, -1.0, 1.0])
ROT_180_Z = np.diag([-1.0, -1.0, 1.0, 1.0])  # 180 degrees about the principal axis
# diffdrr.data.read(orientation="AP")'s `reorient` (diffdrr 0.6.1), applied before the pose.
REORIENT_AP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@contextmanager
def open_h5(path: str | Path, what: str) -> Iterator[Any]:
    """Open an HDF5 file read-only; a missing or foreign file is an ``InputError``."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path} (run the download rule or place it there)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{what} file {path} is not a readable HDF5 file: {exc}") from exc
    try:
        yield f
    finally:
        f.close()


def h5_get(group: Any, key: str) -> Any:
    """``group[key]``, failing with the file and the HDF5 path when the layout differs."""
    try:
        return group[key]
    except KeyError as exc:
        raise InputError(
            f"{group.file.filename}: missing HDF5 object {group.name.rstrip('/')}/{key}"
        ) from exc


def h5_array(group: Any, key: str) -> np.ndarray:
    return np.asarray(h5_get(group, key)[()], dtype=np.float64)


def h5_scalar(group: Any, key: str) -> float:
    """A scalar dataset, stored as () or (1,) or (1,1) in these files."""
    arr = h5_array(group, key).reshape(-1)
    if arr.size != 1:
        raise InputError(f"{group.file.filename}: {group.name}/{key} is not a scalar")
    return float(arr[0])


def pinhole_geometry(
    intrinsic: np.ndarray, rows: int, cols: int, row_spacing: float, col_spacing: float
) -> dict:
    """diffdrr detector (``reverse_x_axis=False``) equal to an xReg pinhole camera.

    Why these formulas: pixel (i, j) (centre at integer index) sits at xReg camera point
    ``(f (j - cx) / |fx|, f (i - cy) / |fy|, -f)``; diffdrr puts it at
    ``(delx (j + 0.5 - W/2) + x0, -dely (i + 0.5 - H/2) + y0, sdd)``, and ``diag(1,-1,-1)`` maps
    one onto the other when ``x0 = -delx (cx + 0.5 - W/2)`` and ``y0 = dely (cy + 0.5 - H/2)``.
    """
    k = np.asarray(intrinsic, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (fx < 0 and fy < 0):
        raise InputError(
            f"intrinsic {k.tolist()}: expected the xReg convention (negative focal lengths, "
            "detector at z = -f)"
        )
    sdd = (abs(fx) * col_spacing + abs(fy) * row_spacing) / 2.0
    delx, dely = sdd / abs(fx), sdd / abs(fy)
    return {
        "sdd": float(sdd),
        "height": int(rows),
        "width": int(cols),
        "delx": float(delx),
        "dely": float(dely),
        "x0": float(-delx * (cx + 0.5 - cols / 2.0)),
        "y0": float(dely * (cy + 0.5 - rows / 2.0)),
        "reverse_x_axis": False,
        "orientation": ORIENTATION,
    }


def crop_geometry(geometry: dict, crop_px: int) -> dict:
    """A centred crop keeps the principal point's offset from the centre: only the size changes."""
    g = dict(geometry)
    g["height"] = int(geometry["height"]) - 2 * crop_px
    g["width"] = int(geometry["width"]) - 2 * crop_px
    if g["height"] < 2 or g["width"] < 2:
        raise InputError(f"crop of {crop_px} px leaves no image ({geometry['height']} rows)")
    return g


def regbench_pose(camera_to_world: np.ndarray) -> np.ndarray:
    """xReg camera-to-world (prepared frame) -> regbench pose (the matrix handed to diffdrr)."""
    return camera_to_world @ DIFFDRR_TO_XREG @ np.linalg.inv(REORIENT_AP)


def read_itk_volume(group: Any) -> tuple[np.ndarray, np.ndarray]:
    """An xReg/ITK image group -> ((X,Y,Z) array, voxel-to-LPS affine)."""
    pixels = np.asarray(h5_get(group, "pixels")[()])
    if pixels.ndim != 3:
        raise InputError(f"{group.file.filename}: {group.name}/pixels is not 3-D ({pixels.shape})")
    data = np.ascontiguousarray(np.transpose(pixels, (2, 1, 0)))  # stored row-major (Z,Y,X)
    spacing = h5_array(group, "spacing").reshape(3)
    origin = h5_array(group, "origin").reshape(3)
    direction = h5_array(group, "dir-mat").reshape(3, 3) if "dir-mat" in group else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return data, affine


def list_subjects(h5_path: str | Path) -> list[str]:
    """Specimens in the file: ``specimen1`` ... for DiffPose's six, the HDF5 name otherwise."""
    names = {v: k for k, v in SPECIMENS.items()}
    with open_h5(h5_path, "DeepFluoro") as f:
        groups = [k for k in f.keys() if k != "proj-params"]
    known = sorted((names[g] for g in groups if g in names), key=lambda s: int(s[8:]))
    return known + sorted(g for g in groups if g not in names)


def _group_name(f: Any, subject: str) -> str:
    name = SPECIMENS.get(subject, subject)
    if name == "proj-params" or name not in f:
        raise InputError(
            f"{f.filename}: no specimen {subject!r} (have {[k for k in f if k != 'proj-params']})"
        )
    return name


def keep_only_labels(prepared: PreparedSubject, labels: tuple[int, ...], where: str) -> None:
    """Set every CT voxel outside ``labels`` of the mask to air (in place).

    Why: DeepFluoro's ground truth is the pelvis pose; the femurs move between views, so a DRR
    that renders them disagrees with the X-ray at the true pose.
    """
    if prepared.mask is None:
        raise InputError(f"{where}: render_labels is set but the file has no vol-seg")
    keep = np.isin(prepared.mask, np.asarray(labels))
    if not keep.any():
        present = sorted(int(v) for v in np.unique(prepared.mask) if v > 0)
        raise InputError(
            f"{where}: none of render_labels {list(labels)} is in the segmentation "
            f"(labels present: {present})"
        )
    prepared.ct[~keep] = AIR_HU


def preprocess_image(img: np.ndarray, crop_px: int, blur: bool) -> torch.Tensor:
    """Raw intensities (H,W) -> (1,1,H-2c,W-2c) line integrals, as DiffPose's ``preprocess``."""
    from torchvision.transforms.functional import gaussian_blur

    if crop_px:
        img = img[crop_px:-crop_px, crop_px:-crop_px]
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))[None, None]
    if blur:
        t = gaussian_blur(t, kernel_size=[5, 5], sigma=[1.0, 1.0])
    return float(np.log(INITIAL_ENERGY)) - torch.log(t.clamp_min(1e-6))


def prepare_deepfluoro(
    h5_path: str | Path,
    subject: str,
    spacing_mm: float,
    height: int | None = None,
    *,
    crop_px: int = COLLIMATOR_CROP_PX,
    blur: bool = True,
    rotate_for_up: bool = True,
    border_px: int = 0,
    render_labels: tuple[int, ...] | None = None,
) -> tuple[PreparedSubject, XraySet, dict]:
    """One specimen: prepared CT (HU, segmentation as mask, 14 landmarks) and its X-rays.

    ``subject`` is ``specimen1`` ... ``specimen6`` or the HDF5 group name. Returns the prepared
    subject (RAS world, centred), the X-rays (ids = projection keys, images preprocessed and
    downsampled to ``height`` rows, ground-truth poses in regbench's convention) and the detector
    geometry after crop and downsampling (for ``geometry.json``; also ``xrays.geometry``).
    ``render_labels``: segmentation labels kept in the prepared CT (every DRR renders only
    them; the rest becomes air); None keeps the whole CT.
    """
    with open_h5(h5_path, "DeepFluoro") as f:
        params = h5_get(f, "proj-params")
        intrinsic = h5_array(params, "intrinsic").reshape(3, 3)
        extrinsic = h5_array(params, "extrinsic").reshape(4, 4)
        raw_geometry = pinhole_geometry(
            intrinsic,
            int(h5_scalar(params, "num-rows")),
            int(h5_scalar(params, "num-cols")),
            h5_scalar(params, "pixel-row-spacing"),
            h5_scalar(params, "pixel-col-spacing"),
        )
        spec = f[_group_name(f, subject)]

        ct, affine_lps = read_itk_volume(h5_get(spec, "vol"))
        mask = None
        if "vol-seg" in spec:
            mask = np.rint(read_itk_volume(h5_get(spec, "vol-seg/image"))[0]).astype(np.int32)
            if mask.shape != ct.shape:
                raise InputError(
                    f"{f.filename}: {spec.name}/vol-seg has shape {mask.shape}, CT {ct.shape}"
                )
        lands = h5_get(spec, "vol-landmarks")
        names = list(lands.keys())
        lps = (
            np.stack([h5_array(lands, n).reshape(3) for n in names]) if names else np.zeros((0, 3))
        )
        ras = lps * LPS_TO_RAS[:3, :3].diagonal()
        landmarks = pd.DataFrame({"name": names, "x": ras[:, 0], "y": ras[:, 1], "z": ras[:, 2]})
        prepared = resample_and_center(
            ct.astype(np.float32), mask, LPS_TO_RAS @ affine_lps, landmarks, spacing_mm
        )
        if render_labels is not None:
            keep_only_labels(prepared, render_labels, f"{f.filename}: {spec.name}")
        world_from_lps = translate(-prepared.shift_mm) @ LPS_TO_RAS

        geometry = crop_geometry(raw_geometry, crop_px)
        centred = abs(geometry["x0"]) < 1e-6 and abs(geometry["y0"]) < 1e-6
        projections = h5_get(spec, "projections")
        ids, images, poses = [], [], []
        for key in sorted(projections.keys()):
            proj = projections[key]
            img = h5_array(proj, "image/pixels")
            if img.shape != (raw_geometry["height"], raw_geometry["width"]):
                raise InputError(
                    f"{f.filename}: {proj.name}/image/pixels has shape {img.shape}, proj-params "
                    f"say {(raw_geometry['height'], raw_geometry['width'])}"
                )
            cam_to_pelvis = h5_array(proj, "gt-poses/cam-to-pelvis-vol").reshape(4, 4)
            camera_to_world = world_from_lps @ cam_to_pelvis @ np.linalg.inv(extrinsic)
            if rotate_for_up and bool(h5_scalar(proj, "rot-180-for-up")):
                if not centred:
                    raise InputError(
                        f"{f.filename}: {proj.name} needs a 180-degree rotation but the principal "
                        "point is off-centre; use rotate_for_up=False"
                    )
                img = img[::-1, ::-1]
                camera_to_world = camera_to_world @ ROT_180_Z
            pose = regbench_pose(camera_to_world)
            check_rigid(pose, f"{f.filename}: {proj.name}/gt-poses/cam-to-pelvis-vol")
            small, out_geometry = downsample(preprocess_image(img, crop_px, blur), geometry, height)
            ids.append(key)
            images.append(small.to(torch.float32))
            poses.append(pose)
    if not ids:
        raise InputError(f"{h5_path}: specimen {subject!r} has no projections")
    xrays = XraySet(
        ids=ids,
        images=torch.cat(images),
        poses=torch.from_numpy(np.stack(poses)),
        geometry=out_geometry,
        border_px=int(border_px),
    )
    return prepared, xrays, out_geometry
