"""`regbench register-image`: one DICOM X-ray of the embedded CT, registered from the command
line; DICOM geometry tags, CT series and the errors that name a missing tag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from regbench.cli import main
from regbench.data.dicom import read_dicom_series
from regbench.errors import InputError
from regbench.register_image import load_xray
from regbench.rendering.example_folder import make_example_custom_folder
from regbench.tables import matrix_columns

GEOMETRY_TAGS = {
    "DistanceSourceToDetector": 1020.0,
    "ImagerPixelSpacing": [6.0, 6.0],
    "DistanceSourceToPatient": 850.0,
    "PositionerPrimaryAngle": 0.0,
    "PositionerSecondaryAngle": 0.0,
}


def write_dicom(path: Path, image: np.ndarray, photometric="MONOCHROME2", **tags) -> Path:
    """A single-frame X-ray DICOM: 16-bit pixels with a rescale that restores ``image``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-ray angiographic image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "XA"
    lo, hi = float(image.min()), float(image.max())
    slope = (hi - lo) / 65535 if hi > lo else 1.0
    stored = np.round((image - lo) / slope).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (65535 - stored).astype(np.uint16)
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{lo:.10g}"
    ds.PixelData = stored.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The worked custom example (embedded CT at 6 mm, X-rays at known poses) as a DICOM X-ray,
    a ground-truth pose file and a small config."""
    root = tmp_path_factory.mktemp("register_image")
    folder = make_example_custom_folder(root / "example", spacing_mm=6.0)
    poses = pd.read_csv(folder / "poses.csv", dtype={"xray_id": str})
    image = np.load(folder / poses["file"].iloc[0])
    dicom = write_dicom(root / "xray.dcm", image, **GEOMETRY_TAGS)
    gt = poses[matrix_columns("gt")].to_numpy(np.float64)[0].reshape(4, 4)
    np.save(root / "gt.npy", gt)
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "device": "cpu",
                "geometry": {"height": 64, "width": 64},
                "render": {"n_points": 96},
                "regressor": {"steps": 4, "batch_size": 2, "checkpoint_every": 2},
            }
        )
    )
    return {"root": root, "folder": folder, "dicom": dicom, "image": image, "config": config}


def _run(case, out: str, *extra: str) -> int:
    root = case["root"]
    return main(
        [
            "register-image",
            "--ct", str(case["folder"] / "ct.nii.gz"),
            "--xray", str(case["dicom"]),
            "--results", str(root / "results"),
            "--out", str(root / out),
            "--config", str(case["config"]),
            "--spacing-mm", "6",
            *extra,
        ]
    )  # fmt: skip


def test_dicom_geometry_comes_from_the_tags(case):
    xray = load_xray(case["dicom"])
    assert xray.geometry["sdd"] == 1020.0 and xray.geometry["delx"] == 6.0
    assert (xray.geometry["height"], xray.geometry["width"]) == case["image"].shape
    assert xray.source_mm == 850.0 and xray.angles_deg == (0.0, 0.0)
    scale = case["image"].max() - case["image"].min()
    assert np.abs(xray.image - case["image"]).max() < 1e-4 * scale


def test_monochrome1_is_inverted_to_dense_bright(case, tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", case["image"], "MONOCHROME1", **GEOMETRY_TAGS)
    xray = load_xray(path)
    assert np.corrcoef(xray.image.ravel(), case["image"].ravel())[0, 1] > 0.999


def test_a_missing_distance_tag_names_the_tag_and_the_option(case, tmp_path):
    tags = {k: v for k, v in GEOMETRY_TAGS.items() if k != "DistanceSourceToDetector"}
    path = write_dicom(tmp_path / "no_sdd.dcm", case["image"], **tags)
    with pytest.raises(InputError, match=r"DistanceSourceToDetector \(0018,1110\).*--sdd"):
        load_xray(path)
    assert load_xray(path, sdd=1000.0).geometry["sdd"] == 1000.0
    rc = main(
        [
            "register-image", "--ct", str(case["folder"] / "ct.nii.gz"), "--xray", str(path),
            "--method", "diffpose", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "o"),
        ]
    )  # fmt: skip
    assert rc == 2 and not (tmp_path / "o" / "pose.json").exists()


def test_diffpose_registers_the_dicom_xray_within_2mm(case):
    """From the header's view (about 3.6 deg and 11 mm off), DiffPose brings the DICOM X-ray
    within 2 mm mTRE of the truth and writes the pose, the overlay and the metrics."""
    rc = _run(
        case,
        "diffpose",
        "--method", "diffpose",
        "--init", "header",
        "--landmarks", str(case["folder"] / "landmarks.csv"),
        "--gt-pose", str(case["root"] / "gt.npy"),
    )  # fmt: skip
    assert rc == 0
    out = case["root"] / "diffpose"
    summary = json.loads((out / "pose.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "ok" and np.asarray(summary["pose"]).shape == (4, 4)
    assert metrics["mtre_init_mm"] > 5.0  # the header's view really was off
    assert metrics["mtre_mm"] < 2.0, metrics
    assert (out / "overlay.png").stat().st_size > 0
    # the estimate is in the CT's own world frame: close to the ground truth given in it
    gt = np.load(case["root"] / "gt.npy")
    assert np.abs(np.asarray(summary["pose"])[:3, 3] - gt[:3, 3]).max() < 10.0


def test_models_are_trained_once_and_the_folder_is_checked(case):
    """The regressor is trained into the results folder on first use and reused afterwards; a
    folder prepared from another CT grid is refused."""
    assert _run(case, "posenet1", "--method", "posenet") == 0
    model = case["root"] / "results" / "models" / "regressor.pt"
    first = model.stat().st_mtime_ns
    assert _run(case, "posenet2", "--method", "posenet") == 0
    assert model.stat().st_mtime_ns == first
    a = json.loads((case["root"] / "posenet1" / "pose.json").read_text())
    b = json.loads((case["root"] / "posenet2" / "pose.json").read_text())
    assert np.allclose(a["pose"], b["pose"])
    assert "metrics" not in a  # no landmarks given: no mTRE
    rc = main(
        [
            "register-image", "--ct", str(case["folder"] / "ct.nii.gz"),
            "--xray", str(case["dicom"]), "--method", "posenet",
            "--results", str(case["root"] / "results"), "--out", str(case["root"] / "bad"),
            "--config", str(case["config"]), "--spacing-mm", "9",
        ]
    )  # fmt: skip
    assert rc == 2 and not (case["root"] / "bad" / "pose.json").exists()


def test_a_ct_series_folder_reads_as_its_nifti(tmp_path):
    """Slices written in shuffled order with an LPS position and spacing come back as the
    volume and RAS affine they were cut from."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1500, size=(6, 5, 4)).astype(np.float32)  # (columns, rows, z)
    origin_lps = np.array([-40.0, 25.0, 100.0])
    spacing = (1.5, 0.8, 2.5)  # column (x), row (y), slice
    for k in rng.permutation(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = volume[:, :, k].T.astype(np.int16).tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = list(origin_lps + [0, 0, k * spacing[2]])
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing, column spacing
        ds.save_as(str(tmp_path / f"s{k}.dcm"), enforce_file_format=True)
    read, affine = read_dicom_series(tmp_path)
    assert np.array_equal(read, volume)
    expected = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    expected[:3, 3] = origin_lps * [-1, -1, 1]
    assert np.allclose(affine, expected)
