"""Command line: one verb per pipeline stage; the Snakemake rules call these.

Each verb takes ``--settings``, the JSON of the validated config sections it depends on, so a
rule reruns exactly when those sections change.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from regbench.errors import InputError


def _settings(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--settings is not valid JSON: {exc}") from exc


def cmd_prepare(args: argparse.Namespace) -> None:
    from regbench.data.prepare import geometry_from_config

    s = _settings(args.settings)
    if args.dataset != "embedded":
        raise InputError(f"unknown dataset '{args.dataset}' (known: embedded)")
    from regbench.data.embedded import prepare_embedded

    ds = s["datasets"]["embedded"]
    prepared = prepare_embedded(ds["spacing_mm"], ds["min_label_voxels"])
    prepared.write(args.out, geometry_from_config(s["geometry"]))
    logging.info(
        "prepared %s/%s: CT %s, %d landmarks",
        args.dataset,
        args.subject,
        prepared.ct.shape,
        len(prepared.landmarks),
    )


def cmd_simulate(args: argparse.Namespace) -> None:
    from regbench.data.simulate import simulate_xrays
    from regbench.geometry.priors import PosePrior
    from regbench.render import load_prepared
    from regbench.seeding import derive_seed

    s = _settings(args.settings)
    prepared = load_prepared(args.prepared)
    seed = derive_seed(s["seed"], args.dataset, args.subject, "simulate")
    xrays = simulate_xrays(
        prepared,
        PosePrior.from_config(s["prior"]),
        s["simulate"]["n_xrays"],
        seed,
        s["render"],
        s["simulate"],
    )
    xrays.write(args.out)
    logging.info("simulated %d X-rays (seed %d)", len(xrays), seed)


def cmd_train_regressor(args: argparse.Namespace) -> None:
    from regbench.render import load_prepared, resolve_device
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


def cmd_register(args: argparse.Namespace) -> None:
    import torch

    from regbench.data.xrays import read_xrays
    from regbench.io import write_csv, write_json
    from regbench.methods import check_method
    from regbench.methods.base import Context
    from regbench.render import load_prepared, make_drr, resolve_device
    from regbench.runner import register_all
    from regbench.seeding import seed_everything
    from regbench.train.regressor import load_regressor

    s = _settings(args.settings)
    check_method(args.method)
    device = resolve_device(s["device"])
    seed_everything(s["seed"])
    prepared = load_prepared(args.prepared)
    xrays = read_xrays(args.xrays, prepared.geometry)
    regressor = load_regressor(args.regressor, s, device)
    drr = make_drr(prepared, s["render"]["bone_attenuation"], s["render"]["renderer"], device)
    context = Context(drr, regressor, s["render"]["n_points"], s, xrays.border_px)
    with torch.inference_mode(False):
        runs, trajectory = register_all(args.method, prepared, xrays, context)
    write_csv(trajectory, args.trajectory)
    write_json({"method": args.method, "settings": s}, Path(args.out).with_suffix(".config.json"))
    write_csv(runs, args.out)


def cmd_tables(args: argparse.Namespace) -> None:
    from regbench.report import build_tables

    build_tables([Path(p) for p in args.runs], Path(args.out_dir), _settings(args.settings))


def cmd_figures(args: argparse.Namespace) -> None:
    from regbench.report import build_figures

    build_figures([Path(p) for p in args.runs], Path(args.out_dir), _settings(args.settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--settings", required=True, help="JSON of the validated config sections")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
        p.set_defaults(func=func)
        return p

    def subject_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True)
        p.add_argument("--subject", required=True)

    p = stage("prepare", cmd_prepare, "CT preprocessing: resample, centre, landmarks")
    subject_args(p)
    p.add_argument("--out", required=True, help="prepared/ folder")

    p = stage("simulate", cmd_simulate, "render test X-rays with a domain gap")
    subject_args(p)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="xrays/ folder")

    p = stage("train-regressor", cmd_train_regressor, "train the pose regressor")
    subject_args(p)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="regressor.pt")
    p.add_argument("--log-csv", required=True, help="training log (step, loss, seconds)")

    p = stage("register", cmd_register, "register every X-ray of a subject with one method")
    p.add_argument("--method", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True)
    p.add_argument("--regressor", required=True)
    p.add_argument("--out", required=True, help="runs/{method}.csv")
    p.add_argument("--trajectory", required=True, help="runs/{method}.trajectory.csv")

    p = stage("tables", cmd_tables, "tables of the paper from the run csvs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)

    p = stage("figures", cmd_figures, "figures from the run and trajectory csvs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import torch

    settings = json.loads(args.settings) if args.settings.strip().startswith("{") else {}
    torch.set_num_threads(args.threads or int(settings.get("threads", 1)))
    try:
        args.func(args)
    except InputError as exc:
        logging.error("%s", exc)
        print(f"regbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
