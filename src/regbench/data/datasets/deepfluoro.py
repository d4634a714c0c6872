"""DeepFluoro: 6 pelvis specimens with real X-rays, one HDF5 file in a zip (JHU archive)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from regbench.data.datasets.archived import ArchivedHdf5
from regbench.data.sources import Source
from regbench.errors import InputError

# DiffPose / diffdrrdata order of the six specimens, and their ids in the HDF5 file.
SPECIMENS = {
    "specimen1": "17-1882",
    "specimen2": "18-1109",
    "specimen3": "18-0725",
    "specimen4": "18-2799",
    "specimen5": "18-2800",
    "specimen6": "17-1905",
}


if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject
    from regbench.data.xrays import XraySet

# The exact URL used by diffdrrdata 0.0.7 (diffdrrdata/utils.py, download_deepfluoro) and by the
# DiffPose README; the zip holds the HDF5 file at its top level.
URL = (
    "http://archive.data.jhu.edu/api/access/datafile/:persistentId/"
    "?persistentId=doi:10.7281/T1/IFSXNV/EAN9GH"
)
SOURCE = Source(
    name="deepfluoro",
    url=URL,
    filename="ipcai_2020_full_res_data.zip",
    size=None,  # about 2.5 GB; not published, recorded on first download
    sha256=None,
    unpack="zip",
    member="ipcai_2020_full_res_data.h5",
    licence="CC BY-NC 4.0 (rg2/DeepFluoroLabeling-IPCAI2020 README); DOI 10.7281/T1/IFSXNV",
    homepage="https://github.com/rg2/DeepFluoroLabeling-IPCAI2020",
)


class DeepFluoro(ArchivedHdf5):
    name = "deepfluoro"
    summary = "6 pelvis specimens, real X-rays"
    source = SOURCE

    def check_subject(self, subject: str, spec: Mapping) -> None:
        super().check_subject(subject, spec)
        if subject not in SPECIMENS:
            raise InputError(f"unknown specimen '{subject}' (known: {', '.join(SPECIMENS)})")

    def read(
        self, subject: str, spec: Mapping, source: str | Path, height: int
    ) -> tuple[PreparedSubject, XraySet]:
        from regbench.data.deepfluoro import PELVIS_LABELS, prepare_deepfluoro

        labels = spec.get("render_labels", PELVIS_LABELS)
        prepared, xrays, _ = prepare_deepfluoro(
            source,
            subject,
            spec["spacing_mm"],
            height,
            border_px=spec["border_px"],
            render_labels=None if labels is None else tuple(labels),
        )
        return prepared, xrays
