"""Bad input fails with exit code 2 and one message naming the file, and leaves no output behind.

Each case breaks one file of a tiny valid input (a 16^3 CT at 8 mm, 8x8 px X-rays) and runs the
CLI step that reads it, in-process as ``regbench.cli.main``: ``parse`` for a ``custom`` folder
(CT, mask, landmarks, X-ray images, poses) and ``register`` for an ``xrays/`` folder (its images
and ground-truth poses are checked on loading, before any model is needed, so no regressor
checkpoint is built). Afterwards no file of the step's outputs, temporary files included, exists.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from regbench.cli import main
from regbench.data.volumes import save_volume, voxel_to_world
from regbench.io import all_or_nothing, write_text
from regbench.tables import matrix_columns

SHAPE = (16, 16, 16)
SPACING = 8.0
PX = 8  # X-ray height and width
AFFINE = np.array(
    [[SPACING, 0, 0, 10.0], [0, SPACING, 0, -20.0], [0, 0, SPACING, 30.0], [0, 0, 0, 1]]
)
GEOMETRY = {
    "sdd": 1020.0,
    "height": PX,
    "width": PX,
    "delx": 40.0,
    "dely": 40.0,
    "x0": 0.0,
    "y0": 0.0,
    "reverse_x_axis": True,
}
PARSE_SETTINGS = json.dumps(
    {
        "seed": 0,
        "threads": 1,
        "datasets": {
            "custom": {"spacing_mm": SPACING, "log_transform": False, "border_px": 0, "height": PX}
        },
    }
)
REGISTER_SETTINGS = json.dumps({"seed": 0, "threads": 1, "device": "cpu"})


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``main`` sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ a valid custom folder


def ct_volume() -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    r2 = ((ijk - 7.5) ** 2).sum(-1)
    return (-1000.0 + 1400.0 * np.exp(-r2 / 30.0)).astype(np.float32)


def rigid_pose(angle: float, shift: tuple[float, float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = shift
    return pose


def write_custom_folder(d: Path) -> Path:
    d.mkdir(parents=True)
    save_volume(ct_volume(), AFFINE, d / "ct.nii.gz")
    mask = np.zeros(SHAPE, np.int16)
    mask[5:11, 5:11, 5:11] = 1
    save_volume(mask, AFFINE, d / "mask.nii.gz")
    ijk = np.array([[4, 4, 4], [11, 4, 4], [4, 11, 4], [4, 4, 11], [8, 8, 8]], dtype=np.float64)
    xyz = voxel_to_world(AFFINE, ijk)
    landmarks = pd.DataFrame(xyz, columns=["x", "y", "z"])
    landmarks.insert(0, "name", [f"L{k + 1}" for k in range(len(xyz))])
    landmarks.to_csv(d / "landmarks.csv", index=False)
    (d / "geometry.json").write_text(json.dumps(GEOMETRY))
    rng = np.random.default_rng(0)
    poses = [rigid_pose(0.1, (70.0, 830.0, 90.0)), rigid_pose(-0.2, (80.0, 850.0, 100.0))]
    files = ["xray000.npy", "xray001.npy"]
    for name in files:
        np.save(d / name, rng.random((PX, PX)).astype(np.float32))
    table = pd.DataFrame(np.stack(poses).reshape(-1, 16), columns=matrix_columns("gt"))
    table.insert(0, "file", files)
    table.insert(0, "xray_id", ["xray000", "xray001"])
    table.to_csv(d / "poses.csv", index=False)
    return d


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_custom_folder(tmp_path_factory.mktemp("custom") / "subject")


def parse_args(source: Path, out: Path) -> list[str]:
    return [
        "parse",
        "--dataset",
        "custom",
        "--subject",
        "subject",
        "--settings",
        PARSE_SETTINGS,
        "--source",
        str(source),
        "--prepared",
        str(out / "prepared"),
        "--xrays",
        str(out / "xrays"),
    ]


PARSE_OUTPUTS = [
    "prepared/ct.nii.gz",
    "prepared/mask.nii.gz",
    "prepared/landmarks.csv",
    "prepared/geometry.json",
    "xrays/xrays.pt",
    "xrays/index.csv",
]


@pytest.fixture(scope="module")
def parsed(good_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good folder parsed: ``prepared/`` and ``xrays/`` as ``register`` reads them."""
    out = tmp_path_factory.mktemp("parsed")
    threads = torch.get_num_threads()
    try:
        assert main(parse_args(good_folder, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def error_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"regbench {command}: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_fails_naming(
    argv: list[str], command: str, bad_file: Path, message: str, out: Path, capsys
) -> None:
    """Exit 2; the one error line names ``bad_file`` and matches ``message``; ``out`` is empty."""
    capsys.readouterr()
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err, command)
    assert str(bad_file) in line
    assert re.search(message, line), line
    assert files_under(out) == []  # no output and no temporary file of an atomic write


# ------------------------------------------------------------------ edits that break a folder


def nifti_bytes(data: np.ndarray, **patches: tuple[str, int, tuple]) -> bytes:
    """A .nii.gz of ``data`` whose header fields are overwritten as raw bytes (fmt, offset, values).

    Raw bytes because nibabel refuses to write (or silently repairs) the headers tested here.
    """
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    raw = bytearray(img.to_bytes())
    for fmt, offset, values in patches.values():
        struct.pack_into(fmt, raw, offset, *values)
    return gzip.compress(bytes(raw))


def write_bytes(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(content)


def ct_with(change: Callable[[np.ndarray], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        ct = ct_volume()
        change(ct)
        save_volume(ct, AFFINE, d / "ct.nii.gz")

    return edit


def set_voxel(value: float) -> Callable[[np.ndarray], None]:
    def change(ct: np.ndarray) -> None:
        ct[3, 4, 5] = value

    return change


def truncate(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        content = (d / name).read_bytes()
        (d / name).write_bytes(content[: len(content) // 2])

    return edit


def save_nifti(name: str, data: np.ndarray) -> Callable[[Path], None]:
    return lambda d: save_volume(data, AFFINE, d / name)


def edit_csv(name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        change(pd.read_csv(d / name, dtype={"xray_id": str})).to_csv(d / name, index=False)

    return edit


def set_cell(row: int, column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    return change


def scale_cells(row: int, columns: list[str], factor: float):
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[row, columns] = df.loc[row, columns] * factor
        return df

    return change


def save_image(name: str, image: np.ndarray) -> Callable[[Path], None]:
    return lambda d: np.save(d / name, image)


def image_with_pixel(value: float) -> np.ndarray:
    image = np.ones((PX, PX), np.float32)
    image[2, 3] = value
    return image


MIRROR = ["gt_m02", "gt_m12", "gt_m22"]  # third rotation column: negated, det(R) = -1

PARSE_CASES = [
    # CT
    pytest.param(
        lambda d: (d / "ct.nii.gz").unlink(), "ct.nii.gz", "CT file not found", id="ct-missing"
    ),
    pytest.param(
        write_bytes("ct.nii.gz", b"name,x,y,z\n"),
        "ct.nii.gz",
        "is not a readable NIfTI volume: .*not a gzip file",
        id="ct-not-gzip",
    ),
    pytest.param(
        write_bytes("ct.nii.gz", gzip.compress(b"\x00" * 2000)),
        "ct.nii.gz",
        "is not a readable NIfTI volume",
        id="ct-gzip-but-not-nifti",
    ),
    pytest.param(
        truncate("ct.nii.gz"), "ct.nii.gz", "is not a readable NIfTI volume", id="ct-truncated-gzip"
    ),
    pytest.param(
        save_nifti("ct.nii.gz", ct_volume()[:, :, 0]),
        "ct.nii.gz",
        r"must be a 3-D volume, got shape \(16, 16\)",
        id="ct-2d",
    ),
    pytest.param(
        save_nifti("ct.nii.gz", np.full(SHAPE, -1000.0, np.float32)),
        "ct.nii.gz",
        r"is constant \(-1000.0\)",
        id="ct-constant",
    ),
    pytest.param(ct_with(set_voxel(np.nan)), "ct.nii.gz", "1 NaN or infinite voxels", id="ct-nan"),
    pytest.param(ct_with(set_voxel(np.inf)), "ct.nii.gz", "1 NaN or infinite voxels", id="ct-inf"),
    pytest.param(
        write_bytes("ct.nii.gz", nifti_bytes(ct_volume(), pixdim_x=("<f", 80, (0.0,)))),
        "ct.nii.gz",
        r"voxel spacing \(NIfTI pixdim\[1:4\]\) is \[0.0, 8.0, 8.0\], it must be positive",
        id="ct-spacing-zero",
    ),
    pytest.param(
        write_bytes("ct.nii.gz", nifti_bytes(ct_volume(), pixdim_y=("<f", 84, (-8.0,)))),
        "ct.nii.gz",
        r"voxel spacing \(NIfTI pixdim\[1:4\]\) is \[8.0, -8.0, 8.0\], it must be positive",
        id="ct-spacing-negative",
    ),
    pytest.param(
        write_bytes("ct.nii.gz", nifti_bytes(ct_volume(), srow_y=("<f", 300, (0.0,)))),
        "ct.nii.gz",
        r"invalid voxel spacing/affine: \[8. 0. 8.\]",
        id="ct-affine-zero-column",
    ),
    # mask
    pytest.param(
        save_nifti("mask.nii.gz", np.zeros((16, 16, 15), np.int16)),
        "mask.nii.gz",
        r"has shape \(16, 16, 15\), but the CT has \(16, 16, 16\)",
        id="mask-shape-differs",
    ),
    pytest.param(
        truncate("mask.nii.gz"),
        "mask.nii.gz",
        "mask file .* is not a readable NIfTI volume",
        id="mask-truncated-gzip",
    ),
    # landmarks
    pytest.param(
        lambda d: (d / "landmarks.csv").unlink(),
        "landmarks.csv",
        "landmarks file not found",
        id="landmarks-missing",
    ),
    pytest.param(
        edit_csv("landmarks.csv", lambda df: df.drop(columns=["z"])),
        "landmarks.csv",
        r"missing columns \['z'\]",
        id="landmarks-missing-column",
    ),
    pytest.param(
        edit_csv("landmarks.csv", lambda df: df.head(3)),
        "landmarks.csv",
        "3 landmarks, at least 4 are needed",
        id="landmarks-fewer-than-4",
    ),
    pytest.param(
        edit_csv("landmarks.csv", set_cell(1, "y", 500.0)),
        "landmarks.csv",
        r"outside the CT volume: \['L2'\]",
        id="landmarks-outside-volume",
    ),
    pytest.param(
        edit_csv("landmarks.csv", set_cell(2, "x", "left")),
        "landmarks.csv",
        r"non-numeric or non-finite coordinates of \['L3'\]",
        id="landmarks-non-numeric",
    ),
    # X-ray images
    pytest.param(
        save_image("xray001.npy", np.ones((PX, PX - 2), np.float32)),
        "xray001.npy",
        r"shape \(8, 6\) does not match .*geometry\.json \(height 8, width 8\)",
        id="xray-shape-differs-from-geometry",
    ),
    pytest.param(
        save_image("xray000.npy", image_with_pixel(np.nan)),
        "xray000.npy",
        "1 NaN or infinite pixels",
        id="xray-nan-pixel",
    ),
    pytest.param(
        save_image("xray000.npy", image_with_pixel(-np.inf)),
        "xray000.npy",
        "1 NaN or infinite pixels",
        id="xray-inf-pixel",
    ),
    # poses
    pytest.param(
        edit_csv("poses.csv", scale_cells(1, ["gt_m00"], 1.2)),
        "poses.csv",
        "xray_id xray001: pose is not a rigid transform",
        id="pose-not-orthonormal",
    ),
    pytest.param(
        edit_csv("poses.csv", scale_cells(0, MIRROR, -1.0)),
        "poses.csv",
        "xray_id xray000: pose is not a rigid transform",
        id="pose-det-minus-1",
    ),
    pytest.param(
        edit_csv("poses.csv", set_cell(0, "gt_m30", 1.0)),
        "poses.csv",
        "xray_id xray000: pose is not a rigid transform",
        id="pose-last-row-not-0001",
    ),
    pytest.param(
        edit_csv("poses.csv", set_cell(1, "gt_m13", "nan")),
        "poses.csv",
        "xray_id xray001: pose contains NaN",
        id="pose-nan",
    ),
]


def broken_copy(folder: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    copy = tmp_path / "source"
    shutil.copytree(folder, copy)
    edit(copy)
    return copy


def test_the_good_folder_parses(parsed):
    """The control: without an edit, parse succeeds and writes all its outputs."""
    assert [p.relative_to(parsed).as_posix() for p in files_under(parsed)] == sorted(PARSE_OUTPUTS)


@pytest.mark.parametrize("edit, bad_name, message", PARSE_CASES)
def test_parse_rejects(good_folder, tmp_path, capsys, edit, bad_name, message):
    source = broken_copy(good_folder, tmp_path, edit)
    out = tmp_path / "results"
    assert_fails_naming(parse_args(source, out), "parse", source / bad_name, message, out, capsys)


# ------------------------------------------------------------------ register: xrays/ on loading


def edit_blob(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        blob = torch.load(d / "xrays.pt", weights_only=True)
        change(blob)
        torch.save(blob, d / "xrays.pt")

    return edit


def set_pixel(value: float) -> Callable[[dict], None]:
    def change(blob: dict) -> None:
        blob["images"][1, 0, 2, 3] = value

    return change


def crop_images(blob: dict) -> None:
    blob["images"] = blob["images"][..., : PX - 2].contiguous()


REGISTER_CASES = [
    pytest.param(
        edit_blob(set_pixel(float("nan"))),
        "xrays.pt",
        "images contain NaN or infinite pixels",
        id="xrays-nan-pixel",
    ),
    pytest.param(
        edit_blob(set_pixel(float("inf"))),
        "xrays.pt",
        "images contain NaN or infinite pixels",
        id="xrays-inf-pixel",
    ),
    pytest.param(
        edit_blob(crop_images),
        "xrays.pt",
        r"images have shape \(2, 1, 8, 6\), the subject's geometry\.json says \(N, 1, 8, 8\)",
        id="xrays-shape-differs-from-geometry",
    ),
    pytest.param(
        write_bytes("xrays.pt", b"not a torch file"),
        "xrays.pt",
        "is unreadable",
        id="xrays-corrupt",
    ),
    pytest.param(
        edit_csv("index.csv", scale_cells(1, ["gt_m11"], 0.5)),
        "index.csv",
        "xray_id xray001: pose is not a rigid transform",
        id="pose-not-orthonormal",
    ),
    pytest.param(
        edit_csv("index.csv", scale_cells(0, MIRROR, -1.0)),
        "index.csv",
        "xray_id xray000: pose is not a rigid transform",
        id="pose-det-minus-1",
    ),
    pytest.param(
        lambda d: (d / "index.csv").unlink(),
        "index.csv",
        "X-ray index file not found",
        id="index-missing",
    ),
    pytest.param(
        edit_csv("index.csv", lambda df: df.drop(columns=["gt_m23"])),
        "index.csv",
        r"missing columns \['gt_m23'\]",
        id="index-missing-column",
    ),
]


@pytest.mark.parametrize("edit, bad_name, message", REGISTER_CASES)
def test_register_rejects(parsed, tmp_path, capsys, edit, bad_name, message):
    xrays = broken_copy(parsed / "xrays", tmp_path, edit)
    runs = tmp_path / "runs"
    argv = ["register", "--method", "posenet", "--settings", REGISTER_SETTINGS]
    argv += ["--prepared", str(parsed / "prepared"), "--xrays", str(xrays)]
    argv += ["--regressor", str(tmp_path / "regressor.pt")]  # never reached: inputs fail first
    argv += ["--out", str(runs / "posenet.csv"), "--trajectory", str(runs / "posenet.traj.csv")]
    assert_fails_naming(argv, "register", xrays / bad_name, message, runs, capsys)


# ------------------------------------------------------------------ the real process, and mid-way


def test_exit_code_and_message_of_the_real_command(good_folder, tmp_path):
    """``python -m regbench``: exit 2, one error line naming the file, no traceback."""
    source = broken_copy(good_folder, tmp_path, truncate("ct.nii.gz"))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "regbench", *parse_args(source, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = error_line(proc.stderr, "parse")
    assert f"CT file {source / 'ct.nii.gz'} is not a readable NIfTI volume" in line
    assert files_under(out) == []


def test_a_failure_after_the_first_output_removes_what_was_written(
    good_folder, tmp_path, monkeypatch
):
    """parse writes six files; the CT, written last, fails: the five written before go too."""
    import regbench.data.prepare as prepare

    written = []

    def disk_full(data, affine, path):
        if Path(path).name == "ct.nii.gz":
            written.extend(files_under(tmp_path / "results"))
            raise OSError(28, "No space left on device")
        save_volume(data, affine, path)

    monkeypatch.setattr(prepare, "save_volume", disk_full)
    out = tmp_path / "results"
    with pytest.raises(OSError, match="No space left"):
        main(parse_args(good_folder, out))
    assert len(written) == 5  # xrays.pt, index.csv, landmarks.csv, mask.nii.gz, geometry.json
    assert files_under(out) == []


def test_all_or_nothing_keeps_files_the_failed_block_did_not_write(tmp_path):
    kept, rewritten, new = tmp_path / "kept.csv", tmp_path / "rewritten.csv", tmp_path / "new.csv"
    write_text("old\n", kept)
    write_text("old\n", rewritten)
    with pytest.raises(RuntimeError), all_or_nothing([kept, rewritten, new]):
        write_text("new\n", rewritten)
        write_text("new\n", new)
        raise RuntimeError("step failed")
    assert kept.read_text() == "old\n"
    assert not rewritten.exists() and not new.exists()
    with all_or_nothing([kept, new]):  # success keeps everything
        write_text("new\n", new)
    assert new.read_text() == "new\n"
