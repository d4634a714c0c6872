"""``regbench bench``: timings of the pieces that dominate run time (see :mod:`regbench.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from regbench.cli.common import Subparsers

# regbench.bench.SECTIONS, repeated here so that building the parser imports no torch.
SECTIONS = (
    "render", "jacobian", "convergence", "minimum", "capture", "training", "seeds", "latents",
    "dag",
)  # fmt: skip
# By default the timings only: minimum, capture, training, seeds and latents rerun
# registrations (and training) on a finished run, so they are asked for by name.
DEFAULT_SECTIONS = ("render", "jacobian", "convergence", "dag")
# The latent geometries the paper's Table 3 compares: the seeds and capture sections' methods.
LATENT_VARIANTS = ["ours-so4", "abl-euclidean", "abl-hyperbolic"]


def cmd_bench(args: argparse.Namespace) -> None:
    from regbench.bench import BenchSettings, run_bench
    from regbench.config import load_config
    from regbench.device import resolve_device
    from regbench.errors import InputError

    cfg = load_config(args.config)
    if "embedded" not in cfg.get("datasets", {}):
        raise InputError(
            f"bench --config {args.config}: no datasets.embedded section (the bench's CT and "
            "detector). Overlays such as workflow/configs/validation.yaml complete config.yaml "
            "only in the workflow: pass config.yaml, or a config with that section"
        )
    settings = BenchSettings.from_config(
        cfg,
        out_dir=Path(args.out),
        sections=tuple(args.sections),
        sizes=tuple(args.sizes),
        spacing_mm=args.spacing_mm,
        n_points=args.n_points,
        repeats=args.repeats,
        jacobian_size=args.jacobian_size,
        n_xrays=args.xrays,
        lm_iterations=args.lm_iterations,
        benchmarks=Path(args.benchmarks) if args.benchmarks else None,
        runs=Path(args.runs) if args.runs else None,
        minimum_xrays=args.minimum_xrays,
        training_steps=tuple(args.training_steps),
        training_variant=args.training_variant,
        seed_variants=tuple(args.seed_variants),
        training_seeds=args.training_seeds,
        capture_methods=tuple(args.capture_methods),
        capture_offsets=tuple(args.capture_offsets),
        capture_lm_iterations=args.capture_lm_iterations,
        latent_model=args.latent_model,
        latent_geometries=tuple(args.latent_geometries),
        latent_lm_iterations=args.latent_lm_iterations,
        latent_offset=args.latent_offset,
    )
    run_bench(settings, resolve_device(args.device))


def _offset(text: str) -> tuple[float, float]:
    """``"5:10"`` -> (5.0, 10.0): a start offset of 5 degrees and 10 mm."""
    try:
        deg, mm = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not DEG:MM (e.g. 5:10)") from None
    if deg < 0 or mm < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: offsets are magnitudes (>= 0)")
    return deg, mm


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "bench",
        help="time rendering, pose Jacobians, LM vs Adam and the DAG's rules (bench.csv, bench.md)",
        description="Reads: --config, and for the dag/minimum/capture/training/seeds/latents "
        "sections a finished run (--benchmarks, --runs). Writes: --out/bench.csv, --out/bench.md and the "
        "sections' figures.",
    )
    p.add_argument("--out", default="results/bench", help="output folder")
    p.add_argument(
        "--config",
        default="config.yaml",
        help="every section: the detector, bone attenuation, embedded CT's min_label_voxels; "
        "convergence section: the embedded CT spacing, image size, n_points, prior, DiffPose, seed",
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
        help="minimum, capture, training, seeds and latents sections: a finished subject folder "
        "(prepared/, xrays/, models/, runs/)",
    )
    p.add_argument(
        "--minimum-xrays",
        type=int,
        default=10,
        help="X-rays of the minimum, capture, training and latents sections",
    )
    p.add_argument(
        "--capture-methods",
        nargs="+",
        default=LATENT_VARIANTS,
        help="capture section: the refiners to start from growing offsets",
    )
    p.add_argument(
        "--capture-offsets",
        nargs="+",
        type=_offset,
        default=[(5.0, 10.0), (10.0, 20.0), (20.0, 40.0)],
        metavar="DEG:MM",
        help="capture section: start offsets from the truth, a rotation (deg) about the "
        "isocentre and a shift (mm), each along a random direction per X-ray",
    )
    p.add_argument(
        "--capture-lm-iterations",
        type=int,
        default=None,
        help="capture section: LM's first pass instead of the run's lm.iterations (a longer "
        "budget tells a start out of reach from one the run's budget is too short for)",
    )
    p.add_argument(
        "--training-steps",
        nargs="+",
        type=int,
        default=[0, 30, 60, 120],
        help="training section: step counts to retrain for",
    )
    p.add_argument("--training-variant", default="ours-so4", help="training section: the method")
    p.add_argument(
        "--seed-variants",
        nargs="+",
        default=LATENT_VARIANTS,
        help="seeds section: the learned similarities to retrain (differences to the first)",
    )
    p.add_argument(
        "--training-seeds", type=int, default=3, help="seeds section: retrainings per method"
    )
    p.add_argument(
        "--latent-model",
        default="ours-so4",
        help="latents section: the learned similarity whose trained model is registered under "
        "each latent geometry, its encoder features on and off",
    )
    p.add_argument(
        "--latent-geometries",
        nargs="+",
        default=["spherical", "euclidean", "hyperbolic"],
        help="latents section: the geometries to put in the model (its own is always added, "
        "as the reference of the differences)",
    )
    p.add_argument(
        "--latent-lm-iterations",
        type=int,
        default=None,
        help="latents section: both LM passes' iterations instead of the run's",
    )
    p.add_argument(
        "--latent-offset",
        type=_offset,
        default=None,
        metavar="DEG:MM",
        help="latents section: start from the truth moved by this offset (the capture "
        "section's starts) instead of the regressor's starts",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch and kernel threads")
    p.set_defaults(func=cmd_bench, settings="{}")
