"""Section ``dag``: where a finished run spent its time, per rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from regbench.bench.common import row


def dag_rows(benchmarks: Path, device: torch.device) -> list[dict]:
    """Section ``dag``: per-rule sums of Snakemake benchmark files under ``benchmarks``."""
    rows = []
    files = sorted(benchmarks.rglob("*.tsv"))
    if not files:
        return rows
    per_rule: dict[str, list[pd.DataFrame]] = {}
    for path in files:
        parts = path.relative_to(benchmarks).parts  # rule/.../job.tsv or rule.tsv
        rule = parts[0] if len(parts) > 1 else path.stem
        per_rule.setdefault(rule, []).append(pd.read_csv(path, sep="\t"))
    for rule, frames in sorted(per_rule.items()):
        frame = pd.concat(frames)
        rows += [
            row("dag", rule, 0, "jobs", float(len(frame)), "", device),
            row("dag", rule, 0, "total seconds", float(frame["s"].sum()), "s", device),
            row("dag", rule, 0, "max RSS", float(frame["max_rss"].max()), "MB", device),
        ]
    return rows
