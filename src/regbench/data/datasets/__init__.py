"""Dataset registry: one module per dataset, looked up by its config name.

Two kinds of datasets feed the same data contract:

- *simulated* X-rays (``embedded``, ``embedded-cohort``, ``ctspine1k``): ``prepare`` builds the
  CT, mask and landmarks, ``simulate`` renders test X-rays at poses from the clinical prior;
- *parsed* X-rays (``deepfluoro``, ``ljubljana``, ``custom``): ``parse`` reads CT, landmarks and
  the real X-rays with their ground-truth poses in one pass and writes the same ``prepared/`` and
  ``xrays/`` files.

Raw files of the downloadable datasets live in ``{data_root}/{dataset}/``; each is accepted once its
``.sha256`` record exists beside it (written by :mod:`regbench.data.download` after a verified
download, or after hashing a file put there by hand), so that record is what the workflow tracks.

The Snakefile reads this registry at planning time: importing it, or a dataset module, imports
neither torch nor pandas, and nothing here reads the data. Adding a dataset is one module with a
:class:`~regbench.data.datasets.base.Dataset` subclass and one line in ``_CLASSES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.datasets.base import Dataset

_CLASSES: dict[str, str] = {
    "embedded": "regbench.data.datasets.embedded:Embedded",
    "embedded-cohort": "regbench.data.datasets.embedded_cohort:EmbeddedCohort",
    "deepfluoro": "regbench.data.datasets.deepfluoro:DeepFluoro",
    "ljubljana": "regbench.data.datasets.ljubljana:Ljubljana",
    "ctspine1k": "regbench.data.datasets.ctspine1k:CTSpine1K",
    "custom": "regbench.data.datasets.custom:Custom",
}
NAMES: tuple[str, ...] = tuple(_CLASSES)

# The Snakefile's wildcard for subjects; ids must match it (no slashes, no leading underscore).
SUBJECT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# Keys of a dataset's config that say which subjects run, not how a subject is prepared.
SPLIT_KEYS = frozenset({"enabled", "subjects", "agnostic"})
# Keys that only concern downloads (checksum pins, dataset revision).
DOWNLOAD_KEYS = frozenset({"sha256", "archive_sha256", "revision"})
# Keys that only concern the simulated X-rays (read by `simulate`, not `prepare`).
XRAY_KEYS = frozenset({"n_xrays"})
# Pose priors of the dataset and its views: read by the jobs that sample or judge poses, not by
# `prepare`/`parse` (they reach those jobs as the resolved top-level `prior`).
PRIOR_CONFIG_KEYS = frozenset({"prior", "view_priors"})


@cache
def get(name: str) -> Dataset:
    """The dataset called ``name`` in the config (its module is imported on first use)."""
    try:
        module, cls = _CLASSES[name].split(":")
    except KeyError:
        raise InputError(f"unknown dataset '{name}' (known: {', '.join(NAMES)})") from None
    return getattr(import_module(module), cls)()


def preparation_settings(dataset: str, spec: Mapping) -> dict:
    """The part of a dataset's config that changes its prepared data (split and pins excluded)."""
    skip = SPLIT_KEYS | DOWNLOAD_KEYS | XRAY_KEYS | PRIOR_CONFIG_KEYS
    return {k: v for k, v in spec.items() if k not in skip}


def resolve_prior(config: Mapping, dataset: str, subject: str) -> dict:
    """The prior block of ``subject``: global ``prior``, then the dataset's, then its view's."""
    from regbench.config import subject_prior

    spec = (config.get("datasets") or {}).get(dataset) or {}
    try:
        return subject_prior(config["prior"], spec, get(dataset).view(subject))
    except ValueError as exc:
        raise InputError(f"config key 'datasets.{dataset}.prior': {exc}") from None
