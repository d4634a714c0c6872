"""What every dataset module provides: subject checks, raw files, download, prepare or parse.

The defaults fit a dataset that needs nothing from ``{data_root}``; a dataset overrides only
what differs. Everything called at planning time reads the config only, never the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from regbench.data.datasets import SUBJECT_PATTERN
from regbench.errors import InputError

if TYPE_CHECKING:  # read at planning time: no torch or pandas on import
    from regbench.data.prepare import PreparedSubject
    from regbench.data.xrays import XraySet


class Dataset:
    name: ClassVar[str]
    # "simulated" (rendered by `simulate`) or "parsed" (real, read by `parse`)
    xrays: ClassVar[Literal["simulated", "parsed"]]
    # raw files fetched by the `download` rule into {data_root}/{name}/
    downloaded: ClassVar[bool] = False
    summary: ClassVar[str]

    def check_subject(self, subject: str, spec: Mapping) -> None:
        """Refuse a subject id the dataset cannot have (at planning time, without reading data)."""
        if not re.fullmatch(SUBJECT_PATTERN, subject):
            raise InputError(f"subject id '{subject}' must match {SUBJECT_PATTERN}")

    def view(self, subject: str) -> str | None:
        """The view a subject was imaged in, for datasets whose views have their own prior."""
        return None

    def raw_files(self, subject: str, spec: Mapping) -> list[str]:
        """Files (relative to ``{data_root}/{name}``) that ``subject`` is prepared from."""
        return []

    def source_path(self, subject: str, spec: Mapping, data_root: str | Path) -> str:
        """What the preparing job reads (``--source``); empty when it reads nothing."""
        return ""

    def raw_inputs(self, subject: str, spec: Mapping, data_root: str | Path) -> list[str]:
        """What the workflow tracks for a subject's preparation: its raw files' records."""
        from regbench.data.sources import record_path

        return [record_path(f"{data_root}/{self.name}/{f}") for f in self.raw_files(subject, spec)]

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
        """Fetch one raw file into ``root`` (= ``{data_root}/{name}``), or verify it if present.

        A file already in place (downloaded before, or put there by hand) is hashed and checked
        against ``sha256`` when one is pinned, without network access. Failures raise
        :class:`regbench.data.download.DownloadError` naming the URL and the path where the file
        can be put by hand.
        """
        raise InputError(f"dataset '{self.name}' is not downloaded (nothing to fetch for '{file}')")

    def prepare(
        self, subject: str, spec: Mapping, *, seed: int, source: str | None
    ) -> PreparedSubject:
        """CT, mask and landmarks of a subject whose X-rays are simulated afterwards."""
        raise InputError(f"dataset '{self.name}' has real X-rays: use `regbench parse`")

    def parse(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        """(PreparedSubject, XraySet) of a dataset with real X-rays, read by its parser."""
        raise InputError(f"dataset '{self.name}' has no real X-rays to parse")


class SimulatedDataset(Dataset):
    """X-rays rendered by `simulate` from what `prepare` writes."""

    xrays = "simulated"

    def prepare(
        self, subject: str, spec: Mapping, *, seed: int, source: str | None
    ) -> PreparedSubject:
        raise NotImplementedError


class ParsedDataset(Dataset):
    """Real X-rays: one reader gives CT, landmarks, X-rays and their ground-truth poses."""

    xrays = "parsed"

    def parse(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        import numpy as np

        prepared, xrays = self.read(subject, spec, source, height)
        if prepared.mask is None:  # the contract always has a mask: all background when unknown
            prepared.mask = np.zeros(prepared.ct.shape, dtype=np.int32)
        return prepared, xrays

    def read(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        """The reader's output, before the contract's defaults are filled in."""
        raise NotImplementedError
