"""The custom-folder dataset: the worked example parses back exactly, and bad folders fail clearly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from regbench.data.custom import prepare_custom
from regbench.data.subject import Prepared
from regbench.errors import InputError
from regbench.geometry.poses import perturb
from regbench.rendering.example_folder import make_example_custom_folder
from regbench.rendering.renderer import make_renderer
from regbench.tables import matrix_columns

SPACING = 6.0


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return float((a * b).mean())


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_example_custom_folder(tmp_path_factory.mktemp("custom") / "example")


@pytest.fixture(scope="module")
def parsed(example: Path):
    return prepare_custom(example, SPACING)


def test_example_parses_back(example, parsed):
    prepared, xrays, geometry = parsed
    table = pd.read_csv(example / "poses.csv", dtype={"xray_id": str})
    assert xrays.ids == ["xray000", "xray001"]
    raw = torch.from_numpy(table[matrix_columns("gt")].to_numpy(np.float64).reshape(-1, 4, 4))
    expected = raw.clone()
    expected[:, :3, 3] -= torch.from_numpy(prepared.shift_mm)
    assert torch.allclose(xrays.poses, expected)
    landmarks = pd.read_csv(example / "landmarks.csv")
    assert np.allclose(
        prepared.landmarks[["x", "y", "z"]].to_numpy(),
        landmarks[["x", "y", "z"]].to_numpy() - prepared.shift_mm,
    )
    assert np.array_equal(xrays.images[0, 0].numpy(), np.load(example / "xray000.npy"))
    tif = np.asarray(Image.open(example / "xray001.tif"))
    assert np.array_equal(xrays.images[1, 0].numpy(), tif)
    assert geometry == json.loads((example / "geometry.json").read_text())


@pytest.mark.parametrize("height", [None, 32])
def test_drr_at_the_parsed_pose_matches_the_xray(example, parsed, height):
    prepared, xrays, geometry = (
        parsed if height is None else prepare_custom(example, SPACING, height)
    )
    if height:
        assert xrays.images.shape[-2:] == (height, height)
        assert geometry["delx"] == pytest.approx(2 * 6.0)
    renderer = make_renderer(
        Prepared(prepared.ct, prepared.affine, prepared.landmarks, geometry), 1.0
    )
    with torch.no_grad():
        for k in range(len(xrays)):
            pose, xray = xrays.poses[k : k + 1], xrays.images[k]
            at_gt = ncc(renderer.render(pose, 128), xray)
            assert at_gt > 0.97
            for xi in ([0.0, 0.0, 0.0, 5.0, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0, 0.0, 0.0]):
                moved = perturb(pose, torch.tensor([xi], dtype=torch.float64))
                assert at_gt > ncc(renderer.render(moved, 128), xray) + 0.01


def broken(example: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(example, folder)
    edit(folder)
    return folder


def drop_column(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        df = pd.read_csv(d / "poses.csv")
        df.drop(columns=[name]).to_csv(d / "poses.csv", index=False)

    return edit


def set_pose_entry(column: str, value: float) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        df = pd.read_csv(d / "poses.csv")
        df.loc[1, column] = value
        df.to_csv(d / "poses.csv", index=False)

    return edit


def write_npy(array: np.ndarray) -> Callable[[Path], None]:
    return lambda d: np.save(d / "xray000.npy", array)


def nan_pixel(d: Path) -> None:
    img = np.load(d / "xray000.npy")
    img[3, 4] = np.nan
    np.save(d / "xray000.npy", img)


def rgb_png(d: Path) -> None:
    Image.new("RGB", (64, 64)).save(d / "xray001.png")
    set_file("xray001.png")(d)


def set_file(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        df = pd.read_csv(d / "poses.csv")
        df.loc[1, "file"] = name
        df.to_csv(d / "poses.csv", index=False)

    return edit


def drop_geometry_key(d: Path) -> None:
    g = json.loads((d / "geometry.json").read_text())
    del g["sdd"]
    (d / "geometry.json").write_text(json.dumps(g))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: (d / "poses.csv").unlink(), r"poses file not found: .*poses\.csv"),
        (drop_column("gt_m23"), r"poses\.csv: missing columns \['gt_m23'\]"),
        (drop_column("file"), r"poses\.csv: missing columns \['file'\]"),
        (set_pose_entry("gt_m00", 1.2), r"poses\.csv, xray_id xray001: pose is not a rigid"),
        (set_pose_entry("gt_m13", float("nan")), r"poses\.csv, xray_id xray001: .*NaN"),
        (set_file("missing.npy"), r"X-ray image file not found: .*missing\.npy"),
        (
            write_npy(np.zeros((10, 12))),
            r"xray000\.npy: shape \(10, 12\) does not match .*geometry",
        ),
        (nan_pixel, r"xray000\.npy: 1 NaN or infinite pixels"),
        (rgb_png, r"xray001\.png: PIL mode 'RGB'"),
        (drop_geometry_key, r"geometry\.json: missing keys \['sdd'\]"),
        (lambda d: (d / "ct.nii.gz").unlink(), r"CT file not found: .*ct\.nii\.gz"),
        (lambda d: (d / "landmarks.csv").write_text("name,x\na,1\n"), r"landmarks\.csv: missing"),
    ],
)
def test_bad_folders_name_the_file(example, tmp_path, edit, message):
    with pytest.raises(InputError, match=message):
        prepare_custom(broken(example, tmp_path, edit), SPACING)


def test_png_and_log_transform(example, tmp_path):
    raw = np.exp(-np.load(example / "xray000.npy") / 20.0)  # line integrals -> intensities
    counts = np.round(raw / raw.max() * 60000).astype(np.uint16)

    def edit(d: Path) -> None:
        Image.fromarray(counts).save(d / "xray000.png")
        df = pd.read_csv(d / "poses.csv")
        df.loc[0, "file"] = "xray000.png"
        df.to_csv(d / "poses.csv", index=False)
        np.save(d / "xray001.npy", np.exp(-np.asarray(Image.open(d / "xray001.tif")) / 20.0))
        df.loc[1, "file"] = "xray001.npy"
        df.to_csv(d / "poses.csv", index=False)

    _, xrays, _ = prepare_custom(broken(example, tmp_path, edit), SPACING, log_transform=True)
    expected = np.log(counts.max()) - np.log(counts.astype(np.float64))
    assert np.allclose(xrays.images[0, 0].numpy(), expected, atol=1e-5)
    assert ncc(xrays.images[0], torch.from_numpy(np.load(example / "xray000.npy"))) > 0.999
