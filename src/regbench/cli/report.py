"""Reporting stages: the paper's tables and figures from the run csvs."""

from __future__ import annotations

import argparse
from pathlib import Path

from regbench.cli.common import Subparsers, add_stage, parse_settings


def cmd_generalization_table(args: argparse.Namespace) -> None:
    from regbench.report import build_generalization_tables

    build_generalization_tables(
        [Path(p) for p in args.runs], Path(args.out_dir), parse_settings(args.settings)
    )


def cmd_tables(args: argparse.Namespace) -> None:
    from regbench.report import build_tables

    build_tables([Path(p) for p in args.runs], Path(args.out_dir), parse_settings(args.settings))


def cmd_figures(args: argparse.Namespace) -> None:
    from regbench.report import build_figures

    build_figures(
        [Path(p) for p in args.runs],
        Path(args.out_dir),
        parse_settings(args.settings),
        [Path(p) for p in args.optimizer_studies],
    )


def cmd_backbone_figure(args: argparse.Namespace) -> None:
    from regbench.report import build_backbone_outputs

    build_backbone_outputs(
        [Path(p) for p in args.studies], Path(args.figure_dir), Path(args.table_dir)
    )


def add_parsers(sub: Subparsers) -> None:
    p = add_stage(
        sub,
        "generalization-table",
        cmd_generalization_table,
        "the patient-agnostic table (table2), and the ablation table (table3) when the agnostic"
        " scenario lists the ablations, from the held-out subjects' run csvs",
        "Reads: the held-out subjects' run csvs (--runs). Writes: --out-dir/table2.{csv,md,tex}"
        " (and table3.{csv,md,tex} when --settings lists `ablations`).",
    )
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)

    p = add_stage(
        sub,
        "tables",
        cmd_tables,
        "tables of the paper from the run csvs",
        "Reads: the run csvs (--runs). Writes: --out-dir/table1 and table3 as csv, "
        "Markdown and LaTeX.",
    )
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)

    p = add_stage(
        sub,
        "figures",
        cmd_figures,
        "figures from the run and trajectory csvs",
        "Reads: the run and trajectory csvs (--runs) and --optimizer-studies. Writes: "
        "--out-dir/{mtre_distribution,convergence,qualitative,optimizers}.{png,pdf}.",
    )
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--optimizer-studies", nargs="*", default=[], help="optimizers.trajectory.csv")
    p.add_argument("--out-dir", required=True)

    p = add_stage(
        sub,
        "backbone-figure",
        cmd_backbone_figure,
        "the backbone study as a figure and a table (the paper's Figure 4, left)",
        "Reads: the backbone-study csvs (--studies). Writes: --figure-dir/backbones.{png,pdf} "
        "and --table-dir/backbones.{csv,md,tex}.",
    )
    p.add_argument("--studies", nargs="+", required=True)
    p.add_argument("--figure-dir", required=True)
    p.add_argument("--table-dir", required=True)
