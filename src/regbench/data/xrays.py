"""Test X-rays of a subject: images, exact ground-truth poses and intrinsics.

On disk: ``xrays/xrays.pt`` (tensors) and ``xrays/index.csv`` (``xray_id`` and the ground
truth as ``gt_m00`` ... ``gt_m33``), so tools outside Python can read the poses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from regbench.errors import InputError
from regbench.geometry.poses import check_rigid
from regbench.io import all_or_nothing, numeric, read_table, save_torch, write_csv
from regbench.tables import matrix_columns


@dataclass
class XraySet:
    ids: list[str]
    images: torch.Tensor  # (N,1,H,W) float32, what a method sees
    poses: torch.Tensor  # (N,4,4) float64 ground truth
    geometry: dict
    clean: torch.Tensor | None = None  # (N,1,H,W) before the domain-gap degradations
    border_px: int = 0  # collimator border: image content there is not anatomy, compare inside

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def files(out_dir: str | Path) -> list[Path]:
        """The files :meth:`write` writes."""
        return [Path(out_dir) / "xrays.pt", Path(out_dir) / "index.csv"]

    def write(self, out_dir: str | Path) -> None:
        blob_path, index_path = self.files(out_dir)
        index = pd.DataFrame(self.poses.reshape(-1, 16).numpy(), columns=matrix_columns("gt"))
        index.insert(0, "xray_id", self.ids)
        with all_or_nothing([blob_path, index_path]):
            save_torch(
                {
                    "ids": self.ids,
                    "images": self.images,
                    "clean": self.clean,
                    "poses": self.poses,
                    "geometry": self.geometry,
                    "border_px": self.border_px,
                },
                blob_path,
            )
            write_csv(index, index_path)


def read_xrays(xray_dir: str | Path, geometry: dict) -> XraySet:
    """Load and check X-rays against the subject's geometry; poses are read from index.csv."""
    d = Path(xray_dir)
    path = d / "xrays.pt"
    if not path.is_file():
        raise InputError(f"X-ray file not found: {path}")
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"X-ray file {path} is unreadable: {exc}") from exc
    images = blob.get("images") if isinstance(blob, dict) else None
    if not isinstance(images, torch.Tensor):
        raise InputError(f"X-ray file {path}: no 'images' tensor (not written by regbench?)")
    h, w = int(geometry["height"]), int(geometry["width"])
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, h, w):
        raise InputError(
            f"X-ray file {path}: images have shape {tuple(images.shape)}, "
            f"the subject's geometry.json says (N, 1, {h}, {w})"
        )
    if not torch.isfinite(images).all():
        raise InputError(f"X-ray file {path}: images contain NaN or infinite pixels")
    index_path = d / "index.csv"
    columns = matrix_columns("gt")
    index = read_table(index_path, "X-ray index", ["xray_id", *columns], dtype={"xray_id": str})
    poses = torch.from_numpy(numeric(index, columns).reshape(-1, 4, 4))
    for xray_id, pose in zip(index["xray_id"], poses, strict=True):
        check_rigid(pose, f"ground-truth poses in {index_path}, xray_id {xray_id}")
    if len(poses) != len(images):
        raise InputError(f"{index_path}: {len(poses)} poses, but {path} has {len(images)} images")
    return XraySet(
        index["xray_id"].tolist(),
        images,
        poses,
        geometry,
        blob.get("clean"),
        int(blob.get("border_px", 0)),
    )
