"""Synthetic cohort: each subject a seeded deformation of the embedded CT (no download)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from regbench.data.datasets.base import SimulatedDataset

if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject


class EmbeddedCohort(SimulatedDataset):
    name = "embedded-cohort"
    summary = "synthetic cohort deformed from the embedded CT"

    def prepare(
        self, subject: str, spec: Mapping, *, seed: int, source: str | None
    ) -> PreparedSubject:
        """The subject's deformation is drawn from its own seed, derived from the master ``seed``."""
        from regbench.data.cohort import prepare_cohort_subject
        from regbench.seeding import derive_seed

        return prepare_cohort_subject(spec, derive_seed(seed, self.name, subject, "cohort"))
