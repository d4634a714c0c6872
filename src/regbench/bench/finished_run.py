"""Sections on a finished run's models: ``minimum``, ``capture``, ``training`` and ``seeds``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench import evaluate
from regbench.bench.common import row
from regbench.io import write_csv


def minimum_rows(runs: Path, n_xrays: int, out_dir: Path, device: torch.device) -> list[dict]:
    """Section ``minimum``: every refiner started at the truth, its median drift
    (``minimum.csv`` per X-ray)."""
    from regbench.drift import drift_from_truth, drift_summary

    drift = drift_from_truth(runs, n_xrays)
    write_csv(pd.DataFrame(drift), out_dir / "minimum.csv")
    return [
        row("minimum", name, n_xrays, metric, value, "mm", device)
        for name, metric, value in drift_summary(drift)
    ]


def capture_rows(
    runs: Path,
    methods: tuple[str, ...],
    offsets: tuple[tuple[float, float], ...],
    n_xrays: int,
    seed: int,
    out_dir: Path,
    device: torch.device,
    lm_iterations: int | None = None,
) -> list[dict]:
    """Section ``capture``: per method and offset (``size`` is the offset's index), the offset,
    the starts' median mTRE, SMSR and the median and mean final mTRE (``capture.csv`` per
    X-ray, ``capture.png``). Failed registrations count as misses. ``lm_iterations``: LM's
    first pass instead of the run's, for every rerun registration (0 in the rows: the run's)."""
    from regbench.drift import refine_from_offsets
    from regbench.figures import capture_figure

    frame = pd.DataFrame(refine_from_offsets(runs, n_xrays, offsets, methods, seed, lm_iterations))
    write_csv(frame, out_dir / "capture.csv")
    summary = []
    for name, block in frame.groupby("method", sort=False):
        for k, (deg, mm) in enumerate(offsets):
            one = block[(block["offset_deg"] == deg) & (block["offset_mm"] == mm)]
            s = evaluate.summarize(
                one["mtre_mm"].to_numpy(), np.zeros(len(one)), one["status"].to_numpy(), n_boot=0
            )
            summary.append({
                "method": name, "offset": k, "offset deg": deg, "offset mm": mm,
                "X-rays": len(one), "LM iterations": lm_iterations or 0,
                "start median mTRE": one["mtre_init_mm"].median(), "SMSR": 100 * s["smsr"],
                "median mTRE": s["median_mm"], "mean mTRE": s["mean_mm"],
            })  # fmt: skip
    capture_figure(pd.DataFrame(summary), out_dir / "capture")
    units = {
        "offset deg": "deg", "offset mm": "mm", "X-rays": "", "LM iterations": "",
        "start median mTRE": "mm", "SMSR": "%", "median mTRE": "mm", "mean mTRE": "mm",
    }  # fmt: skip
    return [
        row("capture", r["method"], r["offset"], metric, r[metric], unit, device)
        for r in summary
        for metric, unit in units.items()
    ]


def training_rows(
    runs: Path,
    variant: str,
    steps: tuple[int, ...],
    n_xrays: int,
    out_dir: Path,
    device: torch.device,
) -> list[dict]:
    """Section ``training``: accuracy of ``variant`` after each number of training steps
    (``training.csv`` per X-ray, ``training_curve.png``), from both starts."""
    from regbench.figures import training_curve_figure
    from regbench.training_curve import training_curve

    frame = pd.DataFrame(training_curve(runs, variant, list(steps), n_xrays))
    write_csv(frame, out_dir / "training.csv")
    training_curve_figure(frame, out_dir / "training_curve", variant)
    rows = []
    for (n_steps, start), block in frame.groupby(["steps", "start"], sort=False):
        name = f"{variant}, from the {start}"
        errors = block["mtre_mm"]
        rows += [
            row("training", name, n_steps, "median mTRE", errors.median(), "mm", device),
            row("training", name, n_steps, "mean mTRE", errors.mean(), "mm", device),
            row("training", name, n_steps, "SMSR", 100 * (errors < 1).mean(), "%", device),
        ]
    return rows


def seed_rows(
    runs: Path, variants: tuple[str, ...], repeats: int, out_dir: Path, device: torch.device
) -> list[dict]:
    """Section ``seeds``: each variant's mean mTRE per training seed (0: the run's own model;
    ``seeds.csv`` per X-ray)."""
    from regbench.training_curve import training_spread

    frame = pd.DataFrame(training_spread(runs, list(variants), repeats))
    write_csv(frame, out_dir / "seeds.csv")
    means = frame.groupby(["variant", "training_seed"], sort=False)["mtre_mm"].mean()
    return [
        row("seeds", variant, k, "mean mTRE", value, "mm", device)
        for (variant, k), value in means.items()
    ]


def latent_rows(
    runs: Path,
    variant: str,
    geometries: tuple[str, ...],
    n_xrays: int,
    out_dir: Path,
    device: torch.device,
    lm_iterations: int | None = None,
    offset: tuple[float, float] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Section ``latents``: ``variant``'s trained model under each latent geometry, encoder
    features on and off (``latents.csv`` per X-ray), from the regressor's starts or the truth
    moved by ``offset``: SMSR, mean and median mTRE, the paired difference to the model's own
    geometry with the same features (mean, and median of its size) and the encoder part's
    share of the X-ray embedding."""
    from regbench.latent_swap import swap_latents
    from regbench.models.variants import VARIANTS

    frame = pd.DataFrame(
        swap_latents(runs, variant, geometries, n_xrays, lm_iterations, offset, seed)
    )
    write_csv(frame, out_dir / "latents.csv")
    own = VARIANTS[variant].latent
    rows = []
    for (geometry, features), block in frame.groupby(["geometry", "features"], sort=False):
        reference = frame[(frame["geometry"] == own) & (frame["features"] == features)]
        diff = block["mtre_mm"].to_numpy() - reference["mtre_mm"].to_numpy()
        name = f"{variant} model, {geometry}, features {features}"
        values = {
            "start median mTRE": (block["mtre_init_mm"].median(), "mm"),
            "SMSR": (100 * (block["mtre_mm"] < 1).mean(), "%"),
            "mean mTRE": (block["mtre_mm"].mean(), "mm"),
            "median mTRE": (block["mtre_mm"].median(), "mm"),
            "mean minus own geometry": (float(np.nanmean(diff)), "mm"),
            "median |difference| to own geometry": (float(np.nanmedian(np.abs(diff))), "mm"),
            "encoder share": (block["encoder_share"].mean(), ""),
            "LM iterations": (lm_iterations or 0, ""),
        }
        rows += [
            row("latents", name, len(block), metric, value, unit, device)
            for metric, (value, unit) in values.items()
        ]
    return rows
