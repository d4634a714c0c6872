"""One ``regbench bench`` call: the chosen sections, merged into the csv, and its summary."""

from __future__ import annotations

import pandas as pd
import torch

from regbench.bench.common import bench_subject
from regbench.bench.convergence import convergence_rows
from regbench.bench.dag import dag_rows
from regbench.bench.finished_run import (
    capture_rows,
    latent_rows,
    minimum_rows,
    seed_rows,
    training_rows,
)
from regbench.bench.markdown import summary_markdown
from regbench.bench.renderers import jacobian_rows, render_rows
from regbench.bench.settings import COLUMNS, SECTIONS, BenchSettings
from regbench.data.subject import Prepared
from regbench.geometry.priors import PosePrior
from regbench.io import write_csv, write_text


def run_bench(settings: BenchSettings, device: torch.device) -> pd.DataFrame:
    """Run the chosen sections; write ``bench.csv``, ``bench.md`` (and the convergence
    trajectories) under ``out_dir``. Rows of other sections already in ``bench.csv`` are kept,
    so one section can be remeasured alone."""
    b = settings
    out_dir, sections = b.out_dir, b.sections
    torch.manual_seed(b.seed)
    subjects: dict[tuple[float, int], Prepared] = {}

    def at(size: int, spacing: float = b.spacing_mm) -> Prepared:
        if (spacing, size) not in subjects:
            subjects[spacing, size] = bench_subject(spacing, size, b.detector, b.min_label_voxels)
        return subjects[spacing, size]

    rows: list[dict] = []
    if "render" in sections:
        for size in b.sizes:
            rows += render_rows(
                at(size), b.n_points, b.repeats, device, torch.float32, b.bone_attenuation
            )
    if "jacobian" in sections:
        rows += jacobian_rows(
            at(b.jacobian_size), b.n_points, b.repeats, device, b.bone_attenuation
        )
    if "convergence" in sections:
        conv, traj = convergence_rows(
            at(b.convergence_size, b.convergence_spacing_mm),
            b.convergence_n_points,
            b.n_xrays,
            b.seed,
            b.diffpose,
            b.lm_iterations,
            device,
            PosePrior.from_config(b.prior),
            b.bone_attenuation,
        )
        rows += conv
        write_csv(traj, out_dir / "convergence.trajectory.csv")
    if "minimum" in sections and b.runs is not None:
        rows += minimum_rows(b.runs, b.minimum_xrays, out_dir, device)
    if "capture" in sections and b.runs is not None:
        rows += capture_rows(
            b.runs,
            b.capture_methods,
            b.capture_offsets,
            b.minimum_xrays,
            b.seed,
            out_dir,
            device,
            b.capture_lm_iterations,
        )
    if "training" in sections and b.runs is not None:
        rows += training_rows(
            b.runs, b.training_variant, b.training_steps, b.minimum_xrays, out_dir, device
        )
    if "seeds" in sections and b.runs is not None:
        rows += seed_rows(b.runs, b.seed_variants, b.training_seeds, out_dir, device)
    if "latents" in sections and b.runs is not None:
        rows += latent_rows(
            b.runs,
            b.latent_model,
            b.latent_geometries,
            b.minimum_xrays,
            out_dir,
            device,
            b.latent_lm_iterations,
            b.latent_offset,
            b.seed,
        )
    if "dag" in sections and b.benchmarks is not None:
        rows += dag_rows(b.benchmarks, device)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    previous = out_dir / "bench.csv"
    if previous.is_file():  # keep the sections not rerun this time
        kept = pd.read_csv(previous)
        kept = kept[~kept["section"].isin(frame["section"].unique())]
        frame = pd.concat([kept, frame], ignore_index=True)
        frame["order"] = frame["section"].map({s: i for i, s in enumerate(SECTIONS)})
        frame = frame.sort_values("order", kind="stable").drop(columns="order")
    write_csv(frame, out_dir / "bench.csv")
    write_text(summary_markdown(frame), out_dir / "bench.md")
    return frame
