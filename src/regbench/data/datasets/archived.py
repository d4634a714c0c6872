"""Datasets published as one zip holding one HDF5 file with every subject (DeepFluoro, Ljubljana)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from regbench.data.datasets.base import ParsedDataset
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.sources import Source


class ArchivedHdf5(ParsedDataset):
    downloaded = True
    source: ClassVar[Source]  # a zip whose `member` is the HDF5 file

    def raw_files(self, subject: str, spec: Mapping) -> list[str]:
        return [self.source.member]

    def source_path(self, subject: str, spec: Mapping, data_root: str | Path) -> str:
        return str(Path(data_root) / self.name / self.raw_files(subject, spec)[0])

    def download(
        self,
        file: str,
        root: str | Path,
        *,
        sha256: str | None = None,
        archive_sha256: str | None = None,
        revision: str = "main",
        progress: bool = True,
    ) -> Path:
        """As :meth:`Dataset.download`; ``archive_sha256`` pins the zip, ``sha256`` the HDF5 file."""
        from regbench.data import download as dl

        root = Path(root).expanduser().absolute()
        src = self.source
        if PurePosixPath(file).name != src.member:
            raise InputError(f"{self.name} has no raw file '{file}' (it is {src.member})")
        target = root / src.member
        if target.exists():
            return dl.verify_existing(target, sha256=sha256, url=src.url, progress=progress)
        path = dl.fetch(src, root, sha256=archive_sha256, progress=progress)
        if sha256:
            dl.verify_existing(path, sha256=sha256, url=src.url, progress=progress)
        return path
