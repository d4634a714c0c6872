"""CTSpine1K: spine CTs with vertebra masks, simulated X-rays; only configured cases are fetched.

As published on the Hugging Face Hub (linked from the MIRACLE-Center/CTSpine1K README):
``raw_data/volumes/<subset>/<case>.nii.gz`` and ``raw_data/labels/<subset>/<case>_seg.nii.gz``,
stored here as ``volumes/<case>.nii.gz`` and ``labels/<case>_seg.nii.gz``. Subject ids are the
case ids of the official data_split.txt.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from regbench.data.datasets.base import SimulatedDataset
from regbench.data.sources import Source
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.prepare import PreparedSubject

REPO = "alexanderdann/CTSpine1K"
REVISION = "main"  # the config's `revision` default; a commit freezes the files
# The commit the first download resolved `revision` to; later downloads into the same data
# folder ask for that commit, so one folder never mixes files of two revisions.
REVISION_LOCK = "revision.lock.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")
URL_TEMPLATE = (
    "https://huggingface.co/datasets/{repo}/resolve/{revision}/raw_data/{kind}/{subset}/{file}"
)
SUBSETS = ("COLONOG", "HNSCC-3DCT-RT", "MSD-T10", "COVID-19")
LICENCE = "CC BY-NC-SA (all CTSpine1K sub-datasets, per the CTSpine1K README)"
HOMEPAGE = "https://github.com/MIRACLE-Center/CTSpine1K"
# The official train/test split, pinned to the commit that last changed it (CRLF line endings).
_SPLIT_COMMIT = "2f14a0f99ea90e8727a73912a3e74f4fa7a40c45"
SPLIT_SOURCE = Source(
    name="ctspine1k-split",
    url=f"https://raw.githubusercontent.com/MIRACLE-Center/CTSpine1K/{_SPLIT_COMMIT}/data_split.txt",
    filename="data_split.txt",
    size=31504,
    sha256="62754e079138ead39016be93c422044f4238727e62e3f97d06b722f7b5507683",
    licence=LICENCE,
    homepage=HOMEPAGE,
)

# Label values of the vertebra masks: 1-7 cervical, 8-19 thoracic, 20-25 lumbar (L6 is rare).
LABELS = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
}


class CTSpine1K(SimulatedDataset):
    name = "ctspine1k"
    summary = "spine CTs with vertebra masks"
    downloaded = True

    def check_subject(self, subject: str, spec: Mapping) -> None:
        super().check_subject(subject, spec)
        self.raw_files(subject, spec)  # raises for a case id of no known subset

    def raw_files(self, subject: str, spec: Mapping) -> list[str]:
        try:
            sources = case_sources([subject], revision=spec.get("revision", "main"))
        except ValueError as exc:
            raise InputError(f"ctspine1k subject '{subject}': {exc}") from None
        return [s.filename for s in sources]

    def source_path(self, subject: str, spec: Mapping, data_root: str | Path) -> str:
        return str(Path(data_root) / self.name)

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
        from regbench.data.download import discard, download, recorded_commit

        root = Path(root).expanduser().absolute()
        asked = locked_revision(root, revision)
        match = [s for s in case_sources([_case_of(file)], revision=asked) if s.filename == file]
        if not match:
            raise InputError(f"ctspine1k has no raw file '{file}'")
        path = download(match[0], root / file, sha256=sha256, progress=progress)
        try:
            lock_revision(root, revision, asked, recorded_commit(path))
        except InputError:
            discard(path)  # not of the folder's revision: never leave it looking verified
            raise
        return path

    def prepare(
        self, subject: str, spec: Mapping, *, seed: int, source: str | None
    ) -> PreparedSubject:
        if not source:
            raise InputError("dataset 'ctspine1k' needs --source (its data folder)")
        return prepare_case(source, subject, spec["spacing_mm"], spec["min_label_voxels"])


def _read_lock(root: Path) -> str | None:
    lock = root / REVISION_LOCK
    if not lock.is_file():
        return None
    try:
        commit = json.loads(lock.read_text()).get("commit", "")
    except (OSError, ValueError, AttributeError):
        commit = ""
    if not _COMMIT.fullmatch(str(commit)):
        raise InputError(f"{lock} does not name a 40-hex commit; delete it to lock again")
    return str(commit)


def locked_revision(root: str | Path, revision: str) -> str:
    """The revision to ask for: the folder's locked commit where there is one. A config pinning
    another commit than the lock is refused (the folder holds files of the locked one)."""
    root = Path(root)
    locked = _read_lock(root)
    if locked is None:
        return revision
    if _COMMIT.fullmatch(revision) and revision != locked:
        raise InputError(
            f"datasets.ctspine1k.revision is {revision} but {root / REVISION_LOCK} locks the"
            f" files there at {locked}; use that commit, or move the folder's files and the"
            " lock away to download the other revision"
        )
    return locked


def lock_revision(root: str | Path, revision: str, asked: str, commit: str | None) -> None:
    """Write the lock on the first download: the commit the host named (a branch resolved),
    else the configured commit itself. A host naming another commit than the one asked for
    is an error (the file would not be the pinned one)."""
    from regbench.io import write_json

    root = Path(root)
    if commit is not None and _COMMIT.fullmatch(asked) and commit != asked:
        raise InputError(
            f"the Hub answered commit {commit} for revision {asked} ({REPO}); the files in"
            f" {root} would mix revisions"
        )
    commit = commit or (asked if _COMMIT.fullmatch(asked) else None)
    existing = _read_lock(root)
    if commit is not None and existing is not None and commit != existing:
        raise InputError(  # another download locked the folder while this one ran
            f"a file downloaded into {root} comes from commit {commit}, but"
            f" {root / REVISION_LOCK} locks the folder at {existing}; run the download again"
        )
    if commit is None or existing is not None:
        return
    write_json({"repo": REPO, "revision": revision, "commit": commit}, root / REVISION_LOCK)


def split_case(case_id: str) -> tuple[str, str]:
    """(subset, file stem) of a case id as written in the official data_split.txt."""
    case = case_id.strip()
    case = case.removesuffix(".nii.gz")
    if "/" in case:
        subset, _, case = case.rpartition("/")
        if subset not in SUBSETS:
            raise ValueError(f"unknown CTSpine1K subset {subset!r}; known: {SUBSETS}")
        return subset, case
    if case.startswith(("1.3.6.1.4.1.9328.", "CTC-")):
        return "COLONOG", case
    if case.startswith("HN_P"):
        return "HNSCC-3DCT-RT", case
    if case.startswith("liver_"):
        return "MSD-T10", case
    if case.startswith("volume-covid19-"):
        return "COVID-19", case
    raise ValueError(
        f"cannot tell the CTSpine1K subset of case {case_id!r}; use an id from data_split.txt"
        f" or '<subset>/<case>' with subset in {SUBSETS}"
    )


def case_sources(
    case_ids: Iterable[str], *, labels: bool = True, revision: str = REVISION
) -> list[Source]:
    """Sources for a configured subset of cases (CT volume and vertebra mask each).

    Case ids are those of the official data_split.txt (``liver_0``, ``HN_P001``,
    ``1.3.6.1.4.1.9328.50.4.0001``, ``volume-covid19-A-0003_ct``), with or without ``.nii.gz``.
    The COLONOG subset is gated on the Hub: accept its terms there and set ``HF_TOKEN``.
    """
    sources: list[Source] = []
    for case_id in case_ids:
        subset, case = split_case(case_id)
        kinds = [("volumes", f"{case}.nii.gz", "volume")]
        if labels:
            kinds.append(("labels", f"{case}_seg.nii.gz", "label"))
        for kind, file, role in kinds:
            url = URL_TEMPLATE.format(
                repo=REPO,
                revision=revision,
                kind=kind,
                subset=urllib.parse.quote(subset),
                file=urllib.parse.quote(file),
            )
            sources.append(
                Source(
                    name=f"ctspine1k:{case}:{role}",
                    url=url,
                    filename=f"{kind}/{file}",
                    licence=LICENCE,
                    homepage=HOMEPAGE,
                )
            )
    return sources


def _case_of(file: str) -> str:
    name = PurePosixPath(file).name.removesuffix(".nii.gz")
    return name.removesuffix("_seg") if file.startswith("labels/") else name


def prepare_case(
    root: str | Path, case: str, spacing_mm: float, min_label_voxels: int
) -> PreparedSubject:
    """One case: CT and vertebra mask in RAS, landmarks = complete vertebra centroids."""
    import numpy as np

    from regbench.data.landmarks import MIN_LANDMARKS, label_centroids
    from regbench.data.prepare import resample_and_center
    from regbench.data.volumes import read_ct, read_mask, to_ras

    files = [Path(root) / f for f in CTSpine1K().raw_files(case, {})]
    ct, affine = read_ct(files[0])
    mask, _ = read_mask(files[1], ct.shape)
    ct, mask, affine = to_ras(ct, mask, affine)
    labels = [int(v) for v in np.unique(mask) if v > 0]
    names = {v: LABELS.get(v, f"label{v}") for v in labels}
    landmarks = label_centroids(mask, affine, names, min_label_voxels)
    if len(landmarks) < MIN_LANDMARKS:
        raise InputError(
            f"{files[1]}: only {len(landmarks)} complete vertebrae (labels {labels}), "
            f"need {MIN_LANDMARKS} for the mTRE"
        )
    return resample_and_center(ct, mask, affine, landmarks, spacing_mm)
