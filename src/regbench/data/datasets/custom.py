"""A user's own folders (one per subject): CT, landmarks, geometry, poses and X-ray images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from regbench.data.datasets.base import ParsedDataset
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject
    from regbench.data.xrays import XraySet


class Custom(ParsedDataset):
    name = "custom"
    summary = "a user's folder (regbench.data.custom)"

    def source_path(self, subject: str, spec: Mapping, data_root: str | Path) -> str:
        return folder(spec, subject)

    def raw_inputs(self, subject: str, spec: Mapping, data_root: str | Path) -> list[str]:
        """The folder's files themselves: they are the user's, not downloaded."""
        return folder_files(self.source_path(subject, spec, data_root))

    def read(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        from regbench.data.custom import prepare_custom

        prepared, xrays, _ = prepare_custom(
            source,
            spec["spacing_mm"],
            height,
            log_transform=spec["log_transform"],
            border_px=spec["border_px"],
        )
        return prepared, xrays


def folder(spec: Mapping, subject: str) -> str:
    """The folder of a custom subject: ``folder`` with ``{subject}`` filled in."""
    path = spec.get("folder")
    if not path:
        raise InputError("datasets.custom.folder is not set (the folder holding ct.nii.gz, ...)")
    return str(path).replace("{subject}", subject)


def folder_files(folder: str | Path) -> list[str]:
    """The files of a custom folder that its parse job reads (images listed in poses.csv)."""
    import pandas as pd

    d = Path(folder)
    files = [d / name for name in ("ct.nii.gz", "landmarks.csv", "geometry.json", "poses.csv")]
    if (d / "mask.nii.gz").is_file():
        files.append(d / "mask.nii.gz")
    try:
        listed = pd.read_csv(d / "poses.csv", usecols=["file"], dtype=str)["file"]
        files += [d / name for name in listed.dropna()]
    except (OSError, ValueError):
        pass  # a missing or broken poses.csv is reported by the parse job, naming the file
    return [str(f) for f in files]
