"""embedded-cohort: landmarks follow the deformation of the anatomy exactly; the agnostic trainer."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SCHEMA
from snakemake.utils import validate

from regbench.data.cohort import (
    MAX_CONTRACTION,
    Deformation,
    deform_subject,
    output_grid,
    sample_deformation,
)
from regbench.data.embedded import embedded_files, landmark_labels
from regbench.data.landmarks import label_centroids, read_landmarks
from regbench.data.prepare import PreparedSubject
from regbench.data.volumes import voxel_to_world
from regbench.geometry.priors import PosePrior
from regbench.models.regressor import PoseRegressor
from regbench.models.variants import VARIANTS
from regbench.train.agnostic import train_regressor_agnostic, train_similarity_agnostic
from regbench.train.regressor import load_regressor
from regbench.train.similarity import load_similarity

COHORT = {
    "scale_std": 0.08,
    "elastic_mm": 6.0,
    "elastic_wavelength_mm": 150.0,
    "elastic_components": 4,
    "gain_std": 0.08,
    "offset_hu_std": 20.0,
    "bone_gain_std": 0.1,
}


def grid(n: int, spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * spacing
    return affine


def world_points(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1)
    return voxel_to_world(affine, ijk.reshape(-1, 3))


@pytest.fixture(scope="module")
def blobs() -> PreparedSubject:
    """Air with eight small Gaussian blobs 44 mm apart; each blob's landmark is its centre."""
    n, spacing, sigma = 64, 1.5, 2.0
    affine = grid(n, spacing)
    xyz = world_points((n, n, n), affine)
    corners = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
    centres = 22.0 * corners + np.random.default_rng(1).uniform(-3, 3, (8, 3))
    ct = np.full(n**3, -1000.0)
    for c in centres:
        ct += 1000.0 * np.exp(-((xyz - c) ** 2).sum(1) / (2 * sigma**2))
    landmarks = pd.DataFrame(
        {"name": list("abcdefgh"), "x": centres[:, 0], "y": centres[:, 1], "z": centres[:, 2]}
    )
    return PreparedSubject(
        ct.reshape(n, n, n).astype(np.float32), None, affine, landmarks, np.zeros(3)
    )


def blob_centroid(subject: PreparedSubject, p: np.ndarray, radius_mm: float) -> np.ndarray:
    """Intensity centroid (above air) of the voxels within a cube around ``p``."""
    spacing = subject.affine[0, 0]
    centre = np.round((p - subject.affine[:3, 3]) / spacing).astype(int)
    r = int(np.ceil(radius_mm / spacing))
    window = tuple(slice(max(0, c - r), c + r + 1) for c in centre)
    weight = subject.ct[window].astype(np.float64) + 1000.0
    starts = np.array([w.start for w in window])
    xyz = world_points(weight.shape, subject.affine) + starts * spacing
    return (xyz * weight.reshape(-1, 1)).sum(0) / weight.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_landmarks_follow_the_deformed_anatomy(blobs, seed):
    """The intensity centroid of each warped blob lies on its moved landmark."""
    cfg = {**COHORT, "gain_std": 0.0, "offset_hu_std": 0.0, "bone_gain_std": 0.0}
    deformation = sample_deformation(seed, cfg)
    assert not np.allclose(deformation.scale, 1.0)
    subject = deform_subject(blobs, deformation, 1.5)
    moved = subject.landmarks[["x", "y", "z"]].to_numpy()
    original = blobs.landmarks[["x", "y", "z"]].to_numpy()
    assert np.linalg.norm(moved - original, axis=1).max() > 2.0  # the anatomy did move
    for p in moved:
        # A blob's centroid moves with the centre up to second-order terms (about 0.1 mm here:
        # the stretch varies across the blob); mapping landmarks the wrong way round, or not at
        # all, is off by millimetres.
        assert np.linalg.norm(blob_centroid(subject, p, 10.0) - p) < 0.2


def test_forward_map_inverts_the_backward_map():
    deformation = sample_deformation(7, COHORT)
    x = np.random.default_rng(0).uniform(-200, 200, (500, 3))
    y = deformation.forward(x)
    assert np.abs(deformation.backward(y) - x).max() < 1e-8
    assert deformation.scale.max() * deformation.lipschitz() <= MAX_CONTRACTION + 1e-12


def test_rough_fields_are_softened_to_stay_invertible():
    rough = {**COHORT, "elastic_mm": 60.0, "elastic_wavelength_mm": 40.0, "elastic_components": 8}
    deformation = sample_deformation(3, rough)
    assert deformation.scale.max() * deformation.lipschitz() == pytest.approx(MAX_CONTRACTION)
    x = np.random.default_rng(1).uniform(-150, 150, (200, 3))
    assert np.abs(deformation.backward(deformation.forward(x)) - x).max() < 1e-8


def test_subjects_are_reproducible_and_distinct():
    a, b, c = (sample_deformation(s, COHORT) for s in (5, 5, 6))
    assert np.array_equal(a.scale, b.scale) and np.array_equal(a.amplitudes, b.amplitudes)
    assert not np.array_equal(a.scale, c.scale)


def test_intensity_change_keeps_air():
    d = Deformation(np.ones(3), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), 1.2, 30.0, 1.5)
    hu = np.array([-1000.0, 0.0, 200.0, 1200.0])
    out = d.intensities(hu)
    assert out[0] == -1000.0
    assert out[1] == pytest.approx(-1000 + 1.2 * 1000 + 30)
    assert out[3] == pytest.approx(-1000 + 1.2 * 2200 + 30 + 0.5 * 1000)


def test_output_grid_is_centred_and_holds_the_anatomy():
    deformation = sample_deformation(2, COHORT)
    affine = grid(40, 5.0)
    shape, new_affine = output_grid(affine, (40, 40, 40), deformation, 4.0)
    centre = voxel_to_world(new_affine, (np.asarray(shape)[None] - 1) / 2)
    assert np.allclose(centre, 0.0)
    corners = np.array([[-97.5, -97.5, -97.5], [97.5, 97.5, 97.5]])
    moved = np.abs(deformation.forward(corners)).max(axis=0)
    assert (moved <= (np.asarray(shape) - 1) / 2 * 4.0).all()


def test_embedded_cohort_subject_moves_mask_and_landmarks_together(prepared_dir):
    """On the real CT: vertebra label centroids of the warped mask sit on the moved centroids."""
    ct = nib.load(prepared_dir / "ct.nii.gz")
    mask = np.asarray(nib.load(prepared_dir / "mask.nii.gz").dataobj).astype(np.int32)
    base = PreparedSubject(
        np.asarray(ct.dataobj, dtype=np.float32),
        mask,
        np.asarray(ct.affine),
        read_landmarks(prepared_dir / "landmarks.csv"),
        np.zeros(3),
    )
    deformation = sample_deformation(
        11, {**COHORT, "elastic_mm": 4.0, "elastic_wavelength_mm": 200}
    )
    subject = deform_subject(base, deformation, 6.0)
    names = {
        k: v
        for k, v in landmark_labels(pd.read_csv(embedded_files()[2])).items()
        if v.startswith("vertebrae_")
    }
    before = label_centroids(base.mask, base.affine, names, 5).set_index("name")
    after = label_centroids(subject.mask, subject.affine, names, 5).set_index("name")
    common = before.index.intersection(after.index)
    assert len(common) >= 5
    expected = deformation.forward(before.loc[common, ["x", "y", "z"]].to_numpy())
    error = np.linalg.norm(expected - after.loc[common, ["x", "y", "z"]].to_numpy(), axis=1)
    assert np.median(error) < 2.0 and error.max() < 4.0  # mm, at 6 mm voxels
    moved = deformation.forward(base.landmarks[["x", "y", "z"]].to_numpy())
    assert np.allclose(subject.landmarks[["x", "y", "z"]].to_numpy(), moved)
    assert subject.ct.shape != base.ct.shape or not np.allclose(subject.ct, base.ct)


def training_subjects(prepared_dir, tmp_path) -> list:
    folders = []
    for name in ("s1", "s2"):
        folder = tmp_path / name / "prepared"
        shutil.copytree(prepared_dir, folder)
        folders.append(folder)
    return folders


def test_agnostic_regressor_trains_on_several_subjects(prepared_dir, tmp_path):
    folders = training_subjects(prepared_dir, tmp_path)
    settings = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "geometry": {"height": 32, "width": 32},
        "render": {"n_points": 32},
        "regressor": {"steps": 2, "batch_size": 2, "checkpoint_every": 10},
    }
    validate(settings, str(SCHEMA))  # fills the other keys with their defaults
    out = tmp_path / "models" / "regressor.pt"
    train_regressor_agnostic(
        folders, settings, 1, out, out.with_suffix(".log.csv"), torch.device("cpu")
    )
    model = load_regressor(out, settings, torch.device("cpu"))
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 6)
    assert len(pd.read_csv(out.with_suffix(".log.csv"))) == 2
    assert not out.with_suffix(".partial").exists()


def test_agnostic_similarity_trains_on_several_subjects(prepared_dir, tmp_path):
    folders = training_subjects(prepared_dir, tmp_path)
    settings = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "geometry": {"height": 32, "width": 32},
        "render": {"n_points": 32},
        "similarity": {
            "image_size": 32,
            "pooled_size": 8,
            "patch_px": 3,
            "crop_px": 1,
            "n_points": 16,
            "steps": 3,
            "batch_size": 2,
            "unroll_steps": 1,
            "checkpoint_every": 10,
        },
    }
    validate(settings, str(SCHEMA))
    out = tmp_path / "models" / "similarity-abl-no-ecnn.pt"
    device = torch.device("cpu")
    regressor = PoseRegressor("resnet18", PosePrior.from_config(settings["prior"]))
    train_similarity_agnostic(
        folders, "abl-no-ecnn", settings, 1, out, out.with_suffix(".log.csv"), device, regressor
    )
    model = load_similarity(out, "abl-no-ecnn", settings, device)  # loads like a per-subject one
    assert model.variant == VARIANTS["abl-no-ecnn"]
    assert len(pd.read_csv(out.with_suffix(".log.csv"))) == 3
    snapshot = json.loads(out.with_suffix(".config.json").read_text())
    assert snapshot["training_subjects"] == [str(f) for f in folders]
    assert not out.with_suffix(".partial").exists()
