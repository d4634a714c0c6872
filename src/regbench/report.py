"""Stage entry points for the tables and figures: gather run csvs, call tables/figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench import figures, tables
from regbench.data.subject import load_prepared
from regbench.data.xrays import read_xrays
from regbench.methods import ABLATION_METHODS
from regbench.rendering.renderer import make_renderer
from regbench.tables import matrix_columns


def _summary_kwargs(settings: dict) -> dict:
    ev = settings["evaluation"]
    return {
        "threshold_mm": ev["success_mm"],
        "sr_threshold_mm": ev["sr_mm"],
        "n_boot": ev["n_bootstrap"],
        "seed": settings["seed"],
    }


def build_tables(run_paths: list[Path], out_dir: Path, settings: dict) -> None:
    """Table 1 (every configured method) and, when ``settings["ablation_table"]`` (the
    patient-agnostic scenario does not list the ablations), Table 3 of its ablation rows."""
    runs = tables.load_runs(run_paths)
    kwargs = _summary_kwargs(settings)
    table = tables.table1(runs, expected_methods=settings["methods"], **kwargs)
    tables.write_table(table, out_dir / "table1")
    if settings.get("ablation_table", True):
        _write_ablation_table(runs, settings["methods"], out_dir, kwargs)


def build_generalization_tables(run_paths: list[Path], out_dir: Path, settings: dict) -> None:
    """Table 2 from the patient-agnostic runs (rows ``settings["methods"]``) and, as in the
    paper, Table 3 from the same runs when ``settings["ablations"]`` lists its rows."""
    runs = tables.load_runs(run_paths)
    kwargs = _summary_kwargs(settings)
    rows = runs[runs["method"].isin(settings["methods"])]
    table = tables.generalization_table(rows, expected_methods=settings["methods"], **kwargs)
    # Implemented methods that have no patient-agnostic models yet: say so, not "not implemented".
    pending = table["Method"].isin(settings.get("pending", [])) & (
        table["Note"] == tables.NOT_IMPLEMENTED
    )
    table.loc[pending, "Note"] = "no patient-agnostic model yet"
    tables.write_table(table, out_dir / "table2")
    if settings.get("ablations"):
        _write_ablation_table(runs, settings["ablations"], out_dir, kwargs)


def _write_ablation_table(runs: pd.DataFrame, methods: list[str], out_dir: Path, kwargs: dict):
    """Table 3: the ablation-study rows among ``methods``, in the paper's order."""
    ablation = [m for m in ABLATION_METHODS if m in methods]
    ablation_runs = runs[runs["method"].isin(ablation)]
    table3 = tables.ablation_table(ablation_runs, expected_methods=ablation, **kwargs)
    tables.write_table(table3, out_dir / "table3")


def trajectory_path(run_path: Path) -> Path:
    return run_path.with_name(run_path.name.replace(".csv", ".trajectory.csv"))


def build_figures(
    run_paths: list[Path], out_dir: Path, settings: dict, optimizer_studies: list[Path] = ()
) -> None:
    threshold = settings["evaluation"]["success_mm"]
    if optimizer_studies:
        figures.convergence(list(optimizer_studies), out_dir / "optimizers", threshold)
    runs = tables.load_runs(run_paths)
    figures.mtre_distribution(runs, out_dir / "mtre_distribution", threshold)
    figures.convergence([trajectory_path(p) for p in run_paths], out_dir / "convergence", threshold)
    figures.qualitative_panel(
        qualitative_examples(run_paths, runs, settings), out_dir / "qualitative"
    )


def qualitative_examples(run_paths: list[Path], runs: pd.DataFrame, settings: dict) -> list[dict]:
    """For the first few X-rays of each subject: the X-ray, the DRR at the truth and each
    method's DRR at its estimate (methods in config order; failed estimates left out)."""
    examples = []
    n_show = settings["evaluation"]["qualitative_xrays"]
    n_points = settings["render"]["n_points"]
    subject_dirs = sorted({p.parent.parent for p in run_paths})
    for subject_dir in subject_dirs:
        prepared = load_prepared(subject_dir / "prepared")
        xrays = read_xrays(subject_dir / "xrays", prepared.geometry)
        renderer = make_renderer(
            prepared, settings["render"]["bone_attenuation"], settings["render"]["renderer"]
        )
        dataset, subject = subject_dir.parent.name, subject_dir.name
        mine = runs[(runs["dataset"] == dataset) & (runs["subject"] == subject)]
        methods = [m for m in settings["methods"] if m in set(mine["method"])]
        for i, xray_id in enumerate(xrays.ids[:n_show]):
            estimates = []
            for method in methods:
                row = mine[(mine["method"] == method) & (mine["xray_id"].astype(str) == xray_id)]
                if row.empty:
                    continue
                est = torch.from_numpy(
                    row[matrix_columns("est")].to_numpy(np.float64).reshape(1, 4, 4)
                )
                if not torch.isfinite(est).all():
                    continue
                with torch.no_grad():
                    drr_est = renderer.render(est, n_points)[0, 0].numpy()
                estimates.append(
                    {"method": method, "drr_est": drr_est, "mtre_mm": float(row["mtre_mm"].iloc[0])}
                )
            with torch.no_grad():
                drr_gt = renderer.render(xrays.poses[i : i + 1], n_points)[0, 0].numpy()
            examples.append(
                {
                    "xray_id": f"{subject}/{xray_id}",
                    "xray": xrays.images[i, 0].numpy(),
                    "drr_gt": drr_gt,
                    "estimates": estimates,
                }
            )
    return examples


def build_backbone_outputs(study_paths: list[Path], figure_dir: Path, table_dir: Path) -> None:
    """The backbone study (the paper's Figure 4, left) as a figure and a table."""
    study = pd.concat([pd.read_csv(p) for p in study_paths], ignore_index=True)
    tables.write_table(tables.backbone_table(study), table_dir / "backbones")
    figures.backbone_figure(study, figure_dir / "backbones")
