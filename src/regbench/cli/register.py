"""Registration stages: every X-ray of a subject with one method, the optimiser study, and one
user-supplied X-ray against its CT."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from regbench.cli.common import Subparsers, add_stage, parse_settings


def _registration_context(args: argparse.Namespace, s: dict, method: str):
    from regbench.runner import registration_context

    return registration_context(
        args.prepared,
        args.xrays,
        args.regressor,
        args.similarity,
        s,
        method,
        getattr(args, "model", None),
    )


def cmd_register(args: argparse.Namespace) -> None:
    import torch

    from regbench.io import all_or_nothing, write_csv, write_json
    from regbench.runner import register_all

    s = parse_settings(args.settings)
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

    s = parse_settings(args.settings)
    prepared, xrays, context = _registration_context(args, s, "ours-so4")
    cfg = s["optimizer_study"]
    study = optimizer_study(prepared, xrays, context, cfg["xrays"], cfg["iterations"])
    write_csv(study, args.out)


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


def add_parsers(sub: Subparsers) -> None:
    p = add_stage(
        sub,
        "register",
        cmd_register,
        "register every X-ray of a subject with one method",
        "Reads: --prepared, --xrays, --regressor, --similarity (learned-similarity methods) "
        "and --model (methods with a model of their own). "
        "Writes: --out (one row per X-ray: status, seconds, mTRE, mRPE, poses), --trajectory "
        "(mTRE per iteration) and a .config.json snapshot.",
    )
    p.add_argument("--method", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--regressor", required=True)
    p.add_argument("--similarity", help="similarity-{variant}.pt, for learned-similarity methods")
    p.add_argument("--model", help="models/{method}.pt, for methods with a model of their own")
    p.add_argument("--out", required=True, help="runs/{method}.csv")
    p.add_argument("--trajectory", required=True, help="runs/{method}.trajectory.csv")

    p = add_stage(
        sub,
        "optimizer-study",
        cmd_optimizer_study,
        "LM vs Adam vs GD on ours-so4",
        "Reads: --prepared, --xrays, --regressor, --similarity. Writes: --out "
        "(mTRE per iteration and second for LM, Adam and gradient descent).",
    )
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--regressor", required=True)
    p.add_argument("--similarity", required=True, help="similarity-ours-so4.pt")
    p.add_argument("--out", required=True, help="runs/optimizers.trajectory.csv")

    _add_register_image(sub)


def _add_register_image(sub: Subparsers) -> None:
    """Not a stage of the workflow: a user's own files, options instead of ``--settings``."""
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
