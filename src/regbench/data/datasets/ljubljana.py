"""Ljubljana 3D-DSA: 10 patients imaged AP and lateral, one HDF5 file in a zip (Google Drive)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from regbench.data.datasets.archived import ArchivedHdf5
from regbench.data.sources import Source
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject
    from regbench.data.xrays import XraySet

# The exact URL used by diffdrrdata 0.0.7 (diffdrrdata/utils.py, download_ljubljana) and by the
# DiffPose README; the zip holds the HDF5 file at its top level.
URL = (
    "https://drive.usercontent.google.com/download?id=1x585pGLI8QGk21qZ2oGwwQ9LMJ09Tqrx&confirm=xxx"
)
SOURCE = Source(
    name="ljubljana",
    url=URL,
    filename="ljubljana.zip",
    size=None,  # about 1 GB; not published, recorded on first download
    sha256=None,
    unpack="zip",
    member="ljubljana.h5",
    licence="not stated by DiffPose/diffdrrdata; see the homepage for the terms of use",
    homepage="https://lit.fe.uni-lj.si/en/research/resources/3D-2D-GS-CA/",
)
# One subject per patient and view: each view has its own prior (datasets.ljubljana.view_priors).
SUBJECT = r"subject(0[1-9]|10)-(ap|lat)"


def split_subject(subject: str) -> tuple[str, str]:
    """``subject01-ap`` -> (``subject01``, ``ap``); ``subject01-lat-max`` -> (..., ``lat-max``)."""
    patient, sep, view = subject.partition("-")
    if not sep or not view:
        raise InputError(
            f"Ljubljana subject {subject!r}: expected '<patient>-<view>', e.g. 'subject01-ap'"
        )
    return patient, view


class Ljubljana(ArchivedHdf5):
    name = "ljubljana"
    summary = "10 patients x AP/LAT, 3D-DSA"
    source = SOURCE

    def check_subject(self, subject: str, spec: Mapping) -> None:
        super().check_subject(subject, spec)
        if not re.fullmatch(SUBJECT, subject):
            raise InputError(
                f"Ljubljana subject '{subject}' must be subject01-ap ... subject10-lat"
            )

    def view(self, subject: str) -> str | None:
        return split_subject(subject)[1]

    def read(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        from regbench.data.ljubljana import prepare_ljubljana

        prepared, xrays, _ = prepare_ljubljana(
            source, subject, spec.get("spacing_mm"), height, border_px=spec["border_px"]
        )
        return prepared, xrays
