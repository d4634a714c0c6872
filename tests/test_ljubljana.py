"""Ljubljana parsing, checked against a synthetic ``ljubljana.h5`` in the real file's convention.

Layout as read by diffdrrdata 0.0.7 ``ljubljana.py`` (and DiffPose, xvr): ``subjectNN/volume/
{pixels (X,Y,Z), spacing (3,), origin (3,)}``, ``subjectNN/points (N,3)``, ``subjectNN/proj-{ap,lat}/
{pixels, intrinsic, extrinsic, row-spacing, col-spacing}``. The two views get different
intrinsics (size, spacing, focal length, off-centre principal point). The volume is stored
mirrored along x, as diffdrrdata's ``flip(1)`` implies, and the X-rays are exact line integrals of
the phantom's blobs along the documented pinhole rays (extrinsic = world -> camera, negative focal
lengths), written as DSA frames (background 1, vessels darker, 12-bit steps).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from diffdrr.data import read
from diffdrr.pose import RigidTransform
from test_deepfluoro import (
    PERTURBATIONS,
    gaussian_phantom,
    line_integrals,
    look_at,
    ncc,
    project,
    rigid,
    voxel_grid,
)
from torchio import ScalarImage

from regbench.data.ljubljana import list_subjects, prepare_ljubljana
from regbench.data.subject import Prepared, load_prepared
from regbench.data.xrays import read_xrays
from regbench.errors import InputError
from regbench.geometry.poses import perturb
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.renderer import Renderer

SHAPE = (24, 24, 24)
SPACING = 3.0
ORIGIN = np.array([-35.0, -20.0, 40.0])
CENTRE = ORIGIN + SPACING * (np.asarray(SHAPE) - 1) / 2
BLOBS = [
    (CENTRE + np.asarray(c), s, a)
    for c, s, a in [
        ((10.0, -6.0, 4.0), 3.0, 1.0),
        ((-12.0, 5.0, -8.0), 3.5, 0.8),
        ((3.0, 13.0, -14.0), 2.5, 0.9),
        ((-5.0, -12.0, 12.0), 3.0, 0.7),
        ((15.0, 9.0, 10.0), 2.5, 0.8),
        ((-16.0, -4.0, 2.0), 3.0, 0.9),
    ]
]
rng = np.random.default_rng(1)
POINTS = np.concatenate([np.stack([b[0] for b in BLOBS]), CENTRE + rng.uniform(-20, 20, (2, 3))])
HEIGHT = 30
# view: (rows, cols, pixel mm, focal mm, principal point offsets from the centre in px, camera)
VIEWS = {
    "ap": (
        60,
        72,
        2.0,
        1200.0,
        (2.3, -1.7),
        look_at(
            CENTRE + 700 * np.array([0.1, -1.0, 0.1]),
            CENTRE + [3, -2, 1],
            np.array([0.0, 0.0, 1.0]),
        ),
    ),
    "lat": (
        64,
        56,
        2.2,
        1150.0,
        (-1.4, 2.6),
        look_at(
            CENTRE + 700 * np.array([1.0, 0.15, -0.1]),
            CENTRE + [-2, 2, -3],
            np.array([0.1, 0.0, 1.0]),
        ),
    ),
}


def intrinsic(view: str) -> np.ndarray:
    rows, cols, pixel, focal, (dx, dy), _ = VIEWS[view]
    k = -focal / pixel
    return np.array([[k, 0, (cols - 1) / 2 + dx], [0, k, (rows - 1) / 2 + dy], [0, 0, 1.0]])


def stored_volume() -> np.ndarray:
    """3D-DSA values on the true grid (background 300, below diffdrrdata's threshold)."""
    affine = rigid(np.eye(3) * SPACING, ORIGIN)
    return (300.0 + 6000.0 * gaussian_phantom(voxel_grid(SHAPE, affine), BLOBS)).reshape(SHAPE)


def write_ljubljana_h5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("subject01")
        g["volume/pixels"] = stored_volume()[::-1].astype(np.float32)  # stored mirrored in x
        g["volume/spacing"] = np.full(3, SPACING)
        g["volume/origin"] = ORIGIN
        g["points"] = POINTS
        for view, (rows, cols, pixel, _, _, cam_to_world) in VIEWS.items():
            integral = line_integrals(cam_to_world, intrinsic(view), rows, cols, BLOBS)
            dsa = np.round(4096 * np.exp(-1.5 * integral / integral.max())) / 4096
            p = g.create_group(f"proj-{view}")
            p["pixels"] = dsa.astype(np.float32)
            p["intrinsic"] = intrinsic(view)
            p["extrinsic"] = np.linalg.inv(cam_to_world)  # world -> camera
            p["row-spacing"] = pixel
            p["col-spacing"] = pixel
        f.create_group("subject02/proj-ap")  # listed, never parsed here


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("ljubljana") / "ljubljana.h5"
    write_ljubljana_h5(path)
    out = {}
    for view in VIEWS:
        prepared, xrays, geometry = prepare_ljubljana(path, f"subject01-{view}", SPACING, HEIGHT)
        prep = Prepared(prepared.ct, prepared.affine, prepared.landmarks, geometry)
        out[view] = (prepared, xrays, geometry, make_drr(prep, bone_attenuation=1.0))
    return path, out


def test_subjects_and_errors(parsed, tmp_path):
    path, _ = parsed
    assert list_subjects(path) == ["subject01-ap", "subject01-lat", "subject02-ap"]
    for bad, message in (
        ("subject01", "expected '<patient>-<view>'"),
        ("subject01-pa", "no view 'pa'"),
        ("subject03-ap", "no patient 'subject03'"),
    ):
        with pytest.raises(InputError, match=message):
            prepare_ljubljana(path, bad, SPACING, HEIGHT)
    with pytest.raises(InputError, match="not found"):
        prepare_ljubljana(tmp_path / "none.h5", "subject01-ap", SPACING, HEIGHT)


def test_volume_is_unmirrored_and_points_move_with_it(parsed):
    _, out = parsed
    prepared = out["ap"][0]
    world = voxel_grid(prepared.ct.shape, prepared.affine) + prepared.shift_mm
    truth = 300.0 + 6000.0 * gaussian_phantom(world, BLOBS)
    truth[truth < 1000] = 0.0
    assert np.abs(prepared.ct.reshape(-1) - truth).max() < 0.5
    assert np.allclose(prepared.landmarks[["x", "y", "z"]].to_numpy(), POINTS - prepared.shift_mm)
    assert prepared.landmarks["name"].tolist()[:2] == ["point00", "point01"]
    assert np.array_equal(prepared.ct, out["lat"][0].ct)


def test_each_view_has_its_own_geometry(parsed):
    _, out = parsed
    for view, (rows, cols, pixel, focal, (dx, dy), _) in VIEWS.items():
        _, xrays, geometry, _ = out[view]
        width = round(cols * HEIGHT / rows)
        assert xrays.ids == [view] and xrays.images.shape == (1, 1, HEIGHT, width)
        assert geometry["sdd"] == pytest.approx(focal)
        assert geometry["delx"] * width == pytest.approx(pixel * cols)
        assert geometry["x0"] == pytest.approx(-pixel * dx)
        assert geometry["y0"] == pytest.approx(pixel * dy)
    assert out["ap"][2]["width"] != out["lat"][2]["width"]


def test_points_project_as_the_raw_camera_says(parsed):
    _, out = parsed
    for view, (rows, cols, *_, cam_to_world) in VIEWS.items():
        prepared, xrays, geometry, drr = out[view]
        uv = project(intrinsic(view), np.linalg.inv(cam_to_world), POINTS)
        expected = (uv + 0.5) * [geometry["width"] / cols, HEIGHT / rows]
        pts = torch.tensor(prepared.landmarks[["x", "y", "z"]].to_numpy(), dtype=torch.float32)
        got = drr.perspective_projection(RigidTransform(xrays.poses.float()), pts[None])[0]
        assert np.abs(got.numpy() - expected).max() < 2e-3


def test_drr_at_the_parsed_pose_matches_the_xray(parsed):
    _, out = parsed
    for view in VIEWS:
        prepared, xrays, _, drr = out[view]
        pose, xray = xrays.poses, xrays.images[0]
        with torch.no_grad():
            at_gt = ncc(Renderer(drr).render(pose, 256), xray)
            assert at_gt > 0.9
            for xi in PERTURBATIONS:
                moved = perturb(pose, torch.tensor([xi], dtype=torch.float64))
                assert at_gt > ncc(Renderer(drr).render(moved, 256), xray) + 0.02
        pts = torch.tensor(prepared.landmarks[["x", "y", "z"]].to_numpy(), dtype=torch.float32)
        uv = drr.perspective_projection(RigidTransform(pose.float()), pts[None, : len(BLOBS)])[0]
        ij = np.floor(uv.numpy()[:, ::-1]).astype(int)
        assert (xray[0][tuple(ij.T)] > 0.2 * xray.max()).all()  # the points sit on the vessels


def test_pose_chain_equals_diffdrrdata(parsed):
    """Cross-check with diffdrrdata 0.0.7 ``LjubljanaDataset.__getitem__``, transcribed.

    diffdrrdata: pose = reorient("AP")^-1 . flip_z . inv(extrinsic) . anatomical2world
    (``compose`` applies left first), its volume the stored array flipped along x with affine
    diag(spacing) + origin, centred at its isocentre, and the DRR uses reverse_x_axis=True.
    Checked: our physical camera-to-world is diffdrrdata's times diag(-1,1,1) up to the centring
    offset, and their mirrored camera renders our image exactly.
    """
    path, out = parsed
    flip_z = RigidTransform(torch.diag(torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))
    with h5py.File(path, "r") as f:
        volume = torch.from_numpy(f["subject01/volume/pixels"][:].astype(np.float64))[None]
        affine = np.eye(4)
        affine[:3, :3] = np.diag(f["subject01/volume/spacing"][:])
        affine[:3, 3] = f["subject01/volume/origin"][:]
        image = ScalarImage(tensor=volume.flip(1), affine=affine)
        isocenter = np.asarray(image.get_center())
        reorient = read(image, orientation="AP").reorient.double()
        for view in VIEWS:
            world2camera = RigidTransform(
                torch.from_numpy(f[f"subject01/proj-{view}/extrinsic"][:])
            )
            anatomical2world = RigidTransform(torch.from_numpy(rigid(np.eye(3), -isocenter)))
            pose = (
                RigidTransform(reorient)
                .inverse()
                .compose(flip_z)
                .compose(world2camera.inverse())
                .compose(anatomical2world)
            )
            physical = pose.matrix[0].numpy() @ reorient.numpy()
            prepared, xrays, geometry, drr = out[view]
            offset = rigid(np.eye(3), isocenter - prepared.shift_mm)
            ours = offset @ physical @ np.diag([-1.0, 1.0, 1.0, 1.0])
            assert np.allclose(xrays.poses[0].numpy() @ reorient.numpy(), ours, atol=1e-6)

            mirrored = dict(geometry, reverse_x_axis=True, x0=-geometry["x0"])
            drr_theirs = make_drr(
                Prepared(prepared.ct, prepared.affine, prepared.landmarks, mirrored), 1.0
            )
            theirs = torch.from_numpy(offset @ physical @ np.linalg.inv(reorient.numpy()))[None]
            with torch.no_grad():
                a = Renderer(drr_theirs).render(theirs, 128)
                b = Renderer(drr).render(xrays.poses, 128)
            assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()))


def test_writes_the_data_contract(parsed, tmp_path):
    _, out = parsed
    prepared, xrays, geometry, _ = out["lat"]
    prepared.write(tmp_path / "prepared", geometry)
    xrays.write(tmp_path / "xrays")
    loaded = load_prepared(tmp_path / "prepared")
    assert len(loaded.landmarks) == len(POINTS) and loaded.geometry["width"] == geometry["width"]
    back = read_xrays(tmp_path / "xrays", loaded.geometry)
    assert back.ids == ["lat"] and torch.allclose(back.poses, xrays.poses)
    assert math.isclose(float(back.images.sum()), float(xrays.images.sum()), rel_tol=1e-6)
