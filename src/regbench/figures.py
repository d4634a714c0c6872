"""The paper's figures: mTRE distributions, convergence curves and qualitative overlays.

Figures are built on bare :class:`matplotlib.figure.Figure` objects, never through pyplot: they
render with Agg whatever backend the caller selected, need no display and leak no windows.
Output is deterministic: strip-plot jitter comes from a seeded ``numpy.random.Generator``
(seaborn's stripplot draws from the global RNG) and neither file records a date or version.
Each figure is written as ``{stem}.png`` and ``{stem}.pdf``, atomically.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from regbench.io import atomic_path

TRAJECTORY_COLUMNS = ("xray_id", "method", "iteration", "seconds", "mtre_mm")
FLOOR_MM = 1e-3  # mTRE values below this are drawn at it (log axes cannot show 0)


# ---------------------------------------------------------------- output


def save_figure(fig: Figure, out_stem: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``out_stem.png`` and ``out_stem.pdf`` atomically and return their paths."""
    stem = Path(out_stem)
    paths = []
    for fmt, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata, bbox_inches="tight")
        paths.append(path)
    return paths


def _palette(methods: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per method, shared by every panel of a figure."""
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------- mTRE distribution


def _failed_mask(runs: pd.DataFrame) -> np.ndarray:
    """Rows that count as failures: status not ok, or no finite mTRE."""
    values = pd.to_numeric(runs["mtre_mm"], errors="coerce").to_numpy(dtype=np.float64)
    return (runs["status"].astype(str).to_numpy() != "ok") | ~np.isfinite(values)


def _distribution_panel(
    ax: Axes, runs: pd.DataFrame, methods: list[str], colors: dict, threshold_mm: float
) -> None:
    """Box + seeded-jitter strip of mTRE per method on a log axis; failures noted in labels."""
    failed = _failed_mask(runs)
    ok = runs.loc[~failed].assign(
        mtre_plot=lambda d: np.maximum(pd.to_numeric(d["mtre_mm"]), FLOOR_MM)
    )
    ax.set_yscale("log")
    for i, method in enumerate(methods):
        y = ok.loc[ok["method"] == method, "mtre_plot"].to_numpy()
        if y.size:
            box = ax.boxplot(
                y, positions=[i], widths=0.6, showfliers=False, patch_artist=True,
                orientation="vertical", medianprops={"color": "k"},
            )  # fmt: skip
            box["boxes"][0].set(facecolor=colors[method], alpha=0.5)
    rng = np.random.default_rng(0)
    for i, method in enumerate(methods):
        y = ok.loc[ok["method"] == method, "mtre_plot"].to_numpy()
        x = i + rng.uniform(-0.18, 0.18, size=y.size)
        ax.scatter(x, y, s=8, color=colors[method], edgecolor="k", linewidth=0.3, zorder=3)
    ax.axhline(threshold_mm, color="k", linestyle="--", linewidth=1)
    n_failed = [int(failed[(runs["method"] == m).to_numpy()].sum()) for m in methods]
    labels = [m if k == 0 else f"{m}\n({k} failed)" for m, k in zip(methods, n_failed, strict=True)]
    ax.set_xticks(range(len(methods)), labels, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.set_xlabel("")
    ax.set_ylabel("mTRE (mm)")


def mtre_distribution(
    runs: pd.DataFrame, out_stem: str | Path, threshold_mm: float = 1.0
) -> list[Path]:
    """Per-method mTRE distribution (log scale), one panel per dataset, 1 mm line drawn."""
    if runs.empty:
        raise ValueError("mtre_distribution: no runs to plot")
    runs = runs if "dataset" in runs.columns else runs.assign(dataset="")
    methods = _ordered(runs["method"].astype(str))
    colors = _palette(methods)
    datasets = _ordered(runs["dataset"].astype(str))
    fig = Figure(figsize=(1.0 + 0.8 * len(methods) * len(datasets) + 1.2 * len(datasets), 4.0))
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        subset = runs[runs["dataset"].astype(str) == dataset]
        present = [m for m in methods if m in set(subset["method"].astype(str))]
        _distribution_panel(ax, subset, present, colors, threshold_mm)
        ax.set_title(dataset)
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ---------------------------------------------------------------- convergence


def load_trajectories(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate ``{method}.trajectory.csv`` files; errors name the file.

    ``dataset`` and ``subject`` are added when the path is ``.../{dataset}/{subject}/runs/...``.
    """
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path, dtype={"xray_id": str, "method": str})
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise ValueError(f"{path}: not a readable trajectory csv ({exc})") from exc
        missing = [c for c in TRAJECTORY_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
        parts = Path(path).parts
        if len(parts) >= 4 and parts[-2] == "runs":
            df = df.assign(dataset=parts[-4], subject=parts[-3])
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(TRAJECTORY_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def interpolate_on_grid(seconds: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One X-ray's curve on a common time grid.

    Linear between samples, NaN before the first sample (no estimate exists yet) and held at
    the last value after the registration stopped (its answer does not change any more).
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(seconds, kind="stable")
    seconds, values = seconds[order], values[order]
    out = np.interp(grid, seconds, values)
    out[np.asarray(grid) < seconds[0]] = np.nan
    return out


def _xray_keys(traj: pd.DataFrame) -> list[str]:
    """Columns identifying one X-ray (subject ids may repeat across subjects)."""
    return [c for c in ("dataset", "subject", "xray_id") if c in traj.columns]


def _band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and interquartile range across X-rays (rows), ignoring NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN
        q25, q50, q75 = np.nanpercentile(curves, [25, 50, 75], axis=0)
    return q50, q25, q75


def _by_iteration(traj: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """X-ray x iteration matrix of mTRE, each X-ray's last value held after it stopped."""
    table = traj.pivot_table(
        index=_xray_keys(traj), columns="iteration", values="mtre_mm", aggfunc="last"
    )
    iterations = np.arange(int(table.columns.max()) + 1)
    table = table.reindex(columns=iterations).ffill(axis=1)
    return iterations, table.to_numpy(dtype=np.float64)


def _by_time(traj: pd.DataFrame, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """X-ray x time matrix of mTRE on a grid from 0 to the slowest X-ray's end."""
    grid = np.linspace(0.0, float(traj["seconds"].max()), n_grid)
    curves = [
        interpolate_on_grid(g["seconds"].to_numpy(), g["mtre_mm"].to_numpy(), grid)
        for _, g in traj.groupby(_xray_keys(traj), sort=True)
    ]
    return grid, np.vstack(curves)


def seconds_to_threshold(traj: pd.DataFrame, threshold_mm: float) -> float:
    """Median over X-rays of the first time an X-ray's mTRE is below ``threshold_mm``
    (an X-ray that never gets there counts as infinitely slow)."""
    times = [
        float(g.loc[g["mtre_mm"] < threshold_mm, "seconds"].min())
        if (g["mtre_mm"] < threshold_mm).any()
        else math.inf
        for _, g in traj.groupby(_xray_keys(traj), sort=True)
    ]
    return float(np.median(times)) if times else math.inf


def _draw_band(ax: Axes, x: np.ndarray, curves: np.ndarray, color: Any, label: str) -> None:
    med, lo, hi = (np.maximum(c, FLOOR_MM) for c in _band(curves))
    ax.plot(x, med, color=color, label=label, linewidth=1.5)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)


def convergence(
    trajectories: pd.DataFrame | Sequence[str | Path],
    out_stem: str | Path,
    threshold_mm: float = 1.0,
    n_grid: int = 200,
) -> list[Path]:
    """Median mTRE with interquartile band vs iteration (left) and vs seconds (right).

    One row of panels per dataset. ``seconds`` is cumulative per X-ray, initialisation
    included; iteration 0 is the initial pose.
    """
    traj = (
        trajectories if isinstance(trajectories, pd.DataFrame) else load_trajectories(trajectories)
    )
    if traj.empty:
        raise ValueError("convergence: no trajectories to plot")
    traj = traj if "dataset" in traj.columns else traj.assign(dataset="")
    methods = _ordered(traj["method"].astype(str))
    colors = _palette(methods)
    datasets = _ordered(traj["dataset"].astype(str))
    fig = Figure(figsize=(10.0, 3.6 * len(datasets)))
    axes = fig.subplots(len(datasets), 2, squeeze=False)
    for row, dataset in zip(axes, datasets, strict=True):
        subset = traj[traj["dataset"].astype(str) == dataset]
        for method in methods:
            one = subset[subset["method"].astype(str) == method]
            if one.empty:
                continue
            reach = seconds_to_threshold(one, threshold_mm)
            label = f"{method} (< {threshold_mm:g} mm: " + (
                f"median {reach:.2g} s)" if math.isfinite(reach) else "median never)"
            )
            _draw_band(row[0], *_by_iteration(one), colors[method], method)
            _draw_band(row[1], *_by_time(one, n_grid), colors[method], label)
        for ax, xlabel in zip(row, ("iteration", "time since start (s)"), strict=True):
            ax.set_yscale("log")
            ax.axhline(threshold_mm, color="k", linestyle="--", linewidth=1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mTRE (mm)")
            ax.set_title(dataset)
        row[1].legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ---------------------------------------------------------------- qualitative


def _normalise(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the 1st and 99th percentiles (robust to hot pixels)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def difference_map(drr_gt: np.ndarray, drr_est: np.ndarray) -> np.ndarray:
    """RGB difference map: the DRR at the truth in red, the DRR at the estimate in blue, and
    their overlap white (green is their minimum), so a good estimate reads white and grey with
    thin red/blue fringes, a bad one as separate red and blue structures."""
    gt, est = _normalise(drr_gt), _normalise(drr_est)
    return np.stack([gt, np.minimum(gt, est), est], axis=-1)


def _mtre_title(method: str, mtre_mm: float) -> str:
    value = "failed" if not math.isfinite(float(mtre_mm)) else f"{float(mtre_mm):.2f} mm"
    return f"{method}\nmTRE {value}"


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def qualitative_panel(
    examples: Sequence[Mapping[str, Any]], out_stem: str | Path, max_across: int = 6
) -> list[Path]:
    """The paper's Figure 2: per X-ray a block of two rows, at most ``max_across`` panels wide
    (more methods continue in further blocks of the same X-ray). Top row: the X-ray, then the
    DRR at each method's estimate titled with its mTRE; bottom row: the DRR at the truth, then
    each method's :func:`difference_map`.

    ``examples``: dicts with ``xray_id``, ``xray``, ``drr_gt`` and ``estimates`` (dicts with
    ``method``, ``drr_est``, ``mtre_mm``).
    """
    if not examples:
        raise ValueError("qualitative_panel: no X-rays to draw")
    if max_across < 2:
        raise ValueError("qualitative_panel: max_across must leave room for one method")
    per_block = max_across - 1
    blocks = []  # (example, its estimates in this block)
    for example in examples:
        estimates = list(example["estimates"])
        for i in range(0, max(len(estimates), 1), per_block):
            blocks.append((example, estimates[i : i + per_block]))
    across = 1 + max(len(chunk) for _, chunk in blocks)
    # constrained layout keeps the suptitle clear of the first row's titles
    fig = Figure(figsize=(2.1 * across, 2.35 * 2 * len(blocks) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(blocks), across, squeeze=False)
    for b, (example, chunk) in enumerate(blocks):
        top, bottom = axes[2 * b], axes[2 * b + 1]
        top[0].imshow(_normalise(example["xray"]), cmap="gray", vmin=0, vmax=1)
        top[0].set_title(f"X-ray {example['xray_id']}", fontsize="small")
        bottom[0].imshow(_normalise(example["drr_gt"]), cmap="gray", vmin=0, vmax=1)
        bottom[0].set_title("DRR at the truth", fontsize="small")
        for col in range(1, across):
            if col > len(chunk):
                top[col].axis("off")
                bottom[col].axis("off")
                continue
            estimate = chunk[col - 1]
            top[col].imshow(_normalise(estimate["drr_est"]), cmap="gray", vmin=0, vmax=1)
            top[col].set_title(
                _mtre_title(estimate["method"], estimate["mtre_mm"]), fontsize="small"
            )
            bottom[col].imshow(difference_map(example["drr_gt"], estimate["drr_est"]))
            bottom[col].set_title("truth red / estimate blue", fontsize="x-small")
        for ax in (*top, *bottom):
            _blank(ax)
    fig.suptitle(
        "Registration results: DRR at each estimate (top), difference maps (bottom; overlap white)",
        fontsize="medium",
    )
    return save_figure(fig, out_stem)


def overlay_figure(
    xray: np.ndarray, drr_est: np.ndarray, summary: Mapping[str, Any], out_stem: str | Path
) -> list[Path]:
    """One registration at a glance: the X-ray, the DRR at the estimate and their
    :func:`difference_map` (X-ray red, DRR blue, overlap white)."""
    fig = Figure(figsize=(7.5, 2.9), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(_normalise(xray), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("X-ray", fontsize="small")
    axes[1].imshow(_normalise(drr_est), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("DRR at the estimate", fontsize="small")
    axes[2].imshow(difference_map(xray, drr_est))
    axes[2].set_title("X-ray red / DRR blue", fontsize="small")
    for ax in axes:
        _blank(ax)
    metrics = summary.get("metrics") or {}
    score = f", mTRE {metrics['mtre_mm']:.2f} mm" if "mtre_mm" in metrics else ""
    fig.suptitle(f"{summary['method']} ({summary['status']}{score})", fontsize="medium")
    return save_figure(fig, out_stem)


def training_curve_figure(frame: pd.DataFrame, out_stem: str | Path, variant: str) -> list[Path]:
    """Median mTRE (with interquartile band) against training steps, one line per start."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    for start, block in frame.groupby("start", sort=False):
        stats = block.groupby("steps")["mtre_mm"].quantile([0.25, 0.5, 0.75]).unstack()
        ax.plot(stats.index, stats[0.5], marker="o", label=f"from the {start}")
        ax.fill_between(stats.index, stats[0.25], stats[0.75], alpha=0.2, linewidth=0)
    ax.set_xlabel("training steps")
    ax.set_ylabel("mTRE (mm)")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_title(f"{variant}: longer training")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ---------------------------------------------------------------- backbone study (Figure 4, left)


def backbone_figure(study: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Training time against PoseNet median mTRE, one point per backbone (and subject).

    Filled markers: the loss criterion was met; hollow: the training hit the step cap first, so
    its time is the cap's, not the paper's time-to-criterion.
    """
    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    backbones = _ordered(study["backbone"])
    colours = _palette(backbones)
    for row in study.itertuples():
        colour = colours[row.backbone]
        ax.scatter(
            row.train_seconds,
            max(row.mtre_median_mm, FLOOR_MM),
            s=20 + 6 * float(row.parameters_m),
            facecolors=colour if bool(row.settled) else "none",
            edgecolors=colour,
            linewidths=1.5,
        )
        ax.annotate(
            row.backbone,
            (row.train_seconds, max(row.mtre_median_mm, FLOOR_MM)),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("PoseNet median mTRE (mm)")
    ax.set_title("Pose regressor backbones (hollow: step cap reached)", fontsize=9)
    ax.margins(0.15)
    return save_figure(fig, out_stem)


# ---------------------------------------------------------------- capture range (bench)


def capture_figure(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """SMSR against the starts' median mTRE, one line per method (``bench --sections
    capture``'s summary: one row per method and offset, columns ``method``,
    ``start median mTRE`` and ``SMSR`` in %)."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    methods = _ordered(summary["method"])
    colours = _palette(methods)
    for method in methods:
        block = summary[summary["method"] == method]
        ax.plot(block["start median mTRE"], block["SMSR"], marker="o", color=colours[method],
                label=method)  # fmt: skip
    ax.set_xlabel("start: median mTRE (mm)")
    ax.set_ylabel("SMSR (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Capture range: started at the truth moved by growing offsets")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_stem)
