"""The paper's tables from the per-run csvs, as csv, Markdown and LaTeX.

Table builders return *numeric* frames (one row per dataset and method) so the csv keeps full
precision and any tool can recompute from it; :func:`format_table` turns them into the display
layout (mean ± std, [low, high] intervals) used for the Markdown and LaTeX files.

A method that the config lists but that produced no csv, or whose rows all have status
``not_implemented``, gets a row that says "not implemented" instead of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from regbench.errors import InputError
from regbench.evaluate import failure_adjusted, paired_mean_difference, percentile, summarize
from regbench.io import write_csv, write_text


def matrix_columns(prefix: str) -> list[str]:
    """Column names of a row-major 4x4 in the run tables: ``{prefix}_m00`` ... ``{prefix}_m33``."""
    return [f"{prefix}_m{i}{j}" for i in range(4) for j in range(4)]


POSE_COLUMNS = tuple(matrix_columns("est"))
# Every column of a run csv, in the order the runner writes them.
RUN_CSV_COLUMNS = (
    "xray_id",
    "method",
    "status",
    "seconds",
    "iterations",
    "mtre_init_mm",
    "mtre_mm",
    "mrpe_mm",
    "legacy_mrpe",
    "rot_err_deg",
    "trans_err_mm",
    *matrix_columns("init"),
    *POSE_COLUMNS,
)
# The ones a table needs (runs written before the legacy and start-pose columns still read).
RUN_COLUMNS = tuple(c for c in RUN_CSV_COLUMNS if c != "legacy_mrpe" and not c.startswith("init_"))
LEGACY_INPUT = "legacy_mrpe"
LEGACY_LABEL = "legacy mRPE×px (not mTRE)"
NOT_IMPLEMENTED = "not implemented"
NOT_IMPLEMENTED_STATUS = "not_implemented"

TABLE1_COLUMNS = (
    "Dataset",
    "Method",
    "SMSR (%)",
    "Median (mm)",
    "75% (mm)",
    "95% (mm)",
    "Run time (s)",
    "Mean (mm)",
    "Std (mm)",
    "SR10 (%)",
    "SMSR CI low (%)",
    "SMSR CI high (%)",
    "Median CI low (mm)",
    "Median CI high (mm)",
    "N",
    "Failed",
    LEGACY_LABEL,
    "Note",
)
ABLATION_COLUMNS = ("Dataset", "Method", "SMSR (%)", "Mean (mm)", "Std (mm)", "N", "Failed", "Note")
# Table 3's paired comparison is against the paper's method when the table lists it.
ABLATION_REFERENCE = "ours-so4"
PAIRED_PREFIX = "Mean minus "  # + the reference: Table 3's paired-difference columns
_TEXT_COLUMNS = ("Dataset", "Method", "Note", "Subject", "Backbone", "Loss settled")
_SUMMARY_COUNTS = ("N", "Failed")  # integer columns of the summary tables
_COUNT_COLUMNS = (*_SUMMARY_COUNTS, "Epochs", "Steps")
_SCIENTIFIC_COLUMNS = ("Loss std",)  # a criterion of order 1e-4


# ---------------------------------------------------------------- reading


def parse_run_path(path: str | Path) -> tuple[str, str]:
    """``(dataset, subject)`` from ``.../{dataset}/{subject}/runs/{method}.csv``."""
    parts = Path(path).parts
    if len(parts) < 4 or parts[-2] != "runs":
        raise ValueError(
            f"{path}: expected a path like .../{{dataset}}/{{subject}}/runs/{{method}}.csv"
        )
    return parts[-4], parts[-3]


def read_run_csv(path: str | Path) -> pd.DataFrame:
    """One run csv, checked against the data contract; errors name the file."""
    try:
        df = pd.read_csv(path, dtype={"xray_id": str, "method": str, "status": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable run csv ({exc})") from exc
    missing = [c for c in RUN_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"{path}: run csv has a header but no rows")
    return df


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate run csvs, adding ``dataset`` and ``subject`` parsed from each path."""
    frames = []
    for path in paths:
        dataset, subject = parse_run_path(path)
        df = read_run_csv(path)
        frames.append(df.assign(dataset=dataset, subject=subject))
    if not frames:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "dataset", "subject"])
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- summaries


def not_implemented_row(
    method: str, dataset: str = "", columns: Sequence[str] = TABLE1_COLUMNS
) -> dict:
    """A table row that says the method has no results, with every number missing."""
    row: dict = {c: math.nan for c in columns}
    row.update(Dataset=dataset, Method=method, Note=NOT_IMPLEMENTED)
    return row


def _legacy_median(group: pd.DataFrame) -> float:
    """Median of the legacy DiffPose value, failures as +inf; NaN when the column is absent."""
    if LEGACY_INPUT not in group.columns:
        return math.nan
    values = pd.to_numeric(group[LEGACY_INPUT], errors="coerce").to_numpy(dtype=np.float64)
    values = np.where(group["status"].astype(str).to_numpy() == "ok", values, np.inf)
    values = np.where(np.isnan(values), np.inf, values)
    return float(percentile(values, 50.0)) if values.size else math.nan


def _percent(x: float) -> float:
    return 100.0 * x


def summary_row(group: pd.DataFrame, dataset: str, method: str, **summary_kwargs) -> dict:
    """Table 1 row for one (dataset, method) group of run rows, via :func:`summarize`."""
    s = summarize(
        pd.to_numeric(group["mtre_mm"], errors="coerce").to_numpy(dtype=np.float64),
        pd.to_numeric(group["seconds"], errors="coerce").to_numpy(dtype=np.float64),
        group["status"].astype(str).to_numpy(),
        **summary_kwargs,
    )
    return {
        "Dataset": dataset,
        "Method": method,
        "SMSR (%)": _percent(s["smsr"]),
        "Median (mm)": s["median_mm"],
        "75% (mm)": s["p75_mm"],
        "95% (mm)": s["p95_mm"],
        "Run time (s)": s["median_seconds"],
        "Mean (mm)": s["mean_mm"],
        "Std (mm)": s["std_mm"],
        "SR10 (%)": _percent(s["sr10"]),
        "SMSR CI low (%)": _percent(s["smsr_ci_low"]),
        "SMSR CI high (%)": _percent(s["smsr_ci_high"]),
        "Median CI low (mm)": s["median_ci_low"],
        "Median CI high (mm)": s["median_ci_high"],
        "N": s["n"],
        "Failed": s["n_failed"],
        LEGACY_LABEL: _legacy_median(group),
        "Note": "",
    }


def _ordered(values: Iterable[str], first: Sequence[str] = ()) -> list[str]:
    """``first`` in its order, then the remaining values in order of appearance."""
    out = list(dict.fromkeys(first))
    out += [v for v in dict.fromkeys(values) if v not in out]
    return out


def _summary_frame(
    runs: pd.DataFrame,
    dataset_labels: Mapping[str, str] | None,
    expected_methods: Sequence[str] | None,
    **summary_kwargs,
) -> pd.DataFrame:
    """One Table 1 row per (dataset, method), not-implemented rows included."""
    runs = runs if "dataset" in runs.columns else runs.assign(dataset="")
    implemented = runs[runs["status"].astype(str) != NOT_IMPLEMENTED_STATUS]
    labels = dict(dataset_labels or {})
    rows = []
    for dataset in _ordered(runs["dataset"].astype(str)) or [""]:
        in_dataset = implemented[implemented["dataset"].astype(str) == dataset]
        listed = runs.loc[runs["dataset"].astype(str) == dataset, "method"].astype(str)
        label = labels.get(dataset, dataset)
        for method in _ordered(listed, expected_methods or ()):
            group = in_dataset[in_dataset["method"].astype(str) == method]
            if group.empty:
                rows.append(not_implemented_row(method, label))
            else:
                rows.append(summary_row(group, label, method, **summary_kwargs))
    table = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS))
    return table.astype({c: "Int64" for c in _SUMMARY_COUNTS})


def table1(
    runs: pd.DataFrame,
    dataset_labels: Mapping[str, str] | None = None,
    expected_methods: Sequence[str] | None = None,
    **summary_kwargs,
) -> pd.DataFrame:
    """Paper Table 1: SMSR, median/75%/95% mTRE and run time per (dataset, method), plus
    mean/std, SR10, bootstrap 95% CIs, counts and the legacy DiffPose mRPE×spacing median.

    ``summary_kwargs`` go to :func:`regbench.evaluate.summarize` (thresholds, n_boot, seed).
    """
    return _summary_frame(runs, dataset_labels, expected_methods, **summary_kwargs)


def generalization_table(
    runs: pd.DataFrame,
    dataset_labels: Mapping[str, str] | None = None,
    expected_methods: Sequence[str] | None = None,
    **summary_kwargs,
) -> pd.DataFrame:
    """Patient-agnostic table: the Table 1 layout on the cohort datasets' runs."""
    return _summary_frame(runs, dataset_labels, expected_methods, **summary_kwargs)


def ablation_table(
    runs: pd.DataFrame,
    dataset_labels: Mapping[str, str] | None = None,
    expected_methods: Sequence[str] | None = None,
    reference: str = ABLATION_REFERENCE,
    **summary_kwargs,
) -> pd.DataFrame:
    """Paper Table 3: SMSR and mTRE mean ± std per (dataset, method), and each row's mean
    minus ``reference``'s on the same X-rays with its bootstrap 95% interval
    (:func:`regbench.evaluate.paired_mean_difference`), so a difference between two rows can
    be told from the spread between X-rays. Missing (–) where the dataset has no runs of
    ``reference``, and on its own row."""
    full = _summary_frame(runs, dataset_labels, expected_methods, **summary_kwargs)
    columns = paired_difference_columns(reference)
    table = full[list(ABLATION_COLUMNS)].reindex(columns=[*ABLATION_COLUMNS[:-1], *columns, "Note"])
    runs = runs if "dataset" in runs.columns else runs.assign(dataset="")
    labels = dict(dataset_labels or {})
    n_boot, seed = summary_kwargs.get("n_boot", 1000), summary_kwargs.get("seed", 0)
    for dataset, in_dataset in runs.groupby(runs["dataset"].astype(str), sort=False):
        per_xray = _mtre_per_xray(in_dataset)
        if reference not in per_xray.columns:
            continue
        for method in per_xray.columns.drop(reference):
            d = paired_mean_difference(
                per_xray[method].to_numpy(), per_xray[reference].to_numpy(), n_boot, seed
            )
            at = (table["Dataset"] == labels.get(dataset, dataset)) & (table["Method"] == method)
            table.loc[at, columns] = [d["mean"], d["low"], d["high"]]
    return table


def paired_difference_columns(reference: str) -> list[str]:
    """Table 3's columns of the paired difference to ``reference``: mean, CI low, CI high."""
    name = f"{PAIRED_PREFIX}{reference}"
    return [f"{name} (mm)", f"{name} CI low (mm)", f"{name} CI high (mm)"]


def _mtre_per_xray(runs: pd.DataFrame) -> pd.DataFrame:
    """One column per method, one row per (subject, X-ray), failures as +inf."""
    values = failure_adjusted(
        pd.to_numeric(runs["mtre_mm"], errors="coerce").to_numpy(dtype=np.float64),
        runs["status"].astype(str).to_numpy(),
    )
    subject = runs["subject"] if "subject" in runs.columns else ""
    frame = runs.assign(value=values, subject=subject)
    frame = frame[frame["status"].astype(str) != NOT_IMPLEMENTED_STATUS]
    return frame.pivot_table(
        index=["subject", "xray_id"], columns="method", values="value", aggfunc="first"
    )


# ---------------------------------------------------------------- display


def _fmt(value: object, digits: int) -> str:
    """A number for people: fixed decimals, ∞ for failures, – for missing."""
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)  # type: ignore[arg-type]
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}f}"


def _digits(column: str) -> int:
    """Percentages with one decimal, mm and seconds with two, paired differences with three."""
    if "(%)" in column:
        return 1
    return 3 if column.startswith(PAIRED_PREFIX) else 2


def _pair(df: pd.DataFrame, out: pd.DataFrame, a: str, b: str, name: str, ci: bool) -> pd.DataFrame:
    """``out`` with numeric columns ``a`` and ``b`` of ``df`` merged into one display column."""
    if a not in df.columns or b not in df.columns:
        return out
    d = _digits(a)
    merged = []
    for x, y in zip(df[a], df[b], strict=True):
        lo, hi = _fmt(x, d), _fmt(y, d)
        merged.append("–" if lo == "–" else (f"[{lo}, {hi}]" if ci else f"{lo} ± {hi}"))
    position = out.columns.get_loc(a)
    out = out.drop(columns=[a, b])
    out.insert(position, name, merged)
    return out


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """Display version of a table: strings, mean ± std and [low, high] CIs merged."""
    out = pd.DataFrame(index=df.index)
    for column in df.columns:
        if column in _TEXT_COLUMNS:
            out[column] = df[column].fillna("").astype(str)
        elif column in _COUNT_COLUMNS:
            out[column] = [_fmt(int(v) if not pd.isna(v) else math.nan, 0) for v in df[column]]
        elif column in _SCIENTIFIC_COLUMNS:
            out[column] = ["–" if pd.isna(v) else f"{float(v):.1e}" for v in df[column]]
        else:
            out[column] = [_fmt(v, _digits(column)) for v in df[column]]
    out = _pair(df, out, "Mean (mm)", "Std (mm)", "Mean ± std (mm)", ci=False)
    out = _pair(df, out, "SMSR CI low (%)", "SMSR CI high (%)", "SMSR 95% CI (%)", ci=True)
    out = _pair(df, out, "Median CI low (mm)", "Median CI high (mm)", "Median 95% CI (mm)", ci=True)
    for low in [c for c in df.columns if c.startswith(PAIRED_PREFIX) and c.endswith("CI low (mm)")]:
        name = low.removesuffix(" CI low (mm)")
        out = _pair(df, out, low, f"{name} CI high (mm)", f"{name} 95% CI (mm)", ci=True)
    if "Note" in out.columns and not out["Note"].astype(bool).any():
        out = out.drop(columns="Note")
    return out.reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown pipe table of a (formatted) frame."""

    def cells(values: Iterable[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [cells(table.columns), "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += [cells(row) for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "∞": r"$\infty$",
    "–": "--",
}


def latex_escape(text: object) -> str:
    """Escape LaTeX specials (and the few non-ASCII symbols the tables use)."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular`` of a (formatted) frame: needs only ``\\usepackage{booktabs}``."""
    spec = "".join("l" if c in _TEXT_COLUMNS else "r" for c in table.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in table.columns) + r" \\")
    lines.append("\\midrule")
    lines += [
        " & ".join(latex_escape(v) for v in row) + r" \\" for row in table.itertuples(index=False)
    ]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``stem.csv`` (numeric), ``stem.md`` and ``stem.tex`` (display), each atomically."""
    stem = Path(stem)
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex")]
    shown = format_table(df)
    write_csv(df, paths[0])
    write_text(to_markdown(shown), paths[1])
    write_text(to_latex(shown), paths[2])
    return paths


BACKBONE_COLUMNS = {
    "dataset": "Dataset",
    "subject": "Subject",
    "backbone": "Backbone",
    "parameters_m": "Params (M)",
    "epochs": "Epochs",
    "steps": "Steps",
    "settled": "Loss settled",
    "loss_std": "Loss std",
    "train_seconds": "Train time (s)",
    "mtre_median_mm": "PoseNet median (mm)",
    "mtre_mean_mm": "PoseNet mean (mm)",
}


def backbone_table(study: pd.DataFrame) -> pd.DataFrame:
    """The backbone study's rows with the tables' headers (the paper's Figure 4, left)."""
    missing = [c for c in BACKBONE_COLUMNS if c not in study.columns]
    if missing:
        raise InputError(f"backbone study is missing columns {missing}")
    table = study[list(BACKBONE_COLUMNS)].rename(columns=BACKBONE_COLUMNS)
    table["Loss settled"] = table["Loss settled"].map({True: "yes", False: "no (step cap)"})
    return table.reset_index(drop=True)
