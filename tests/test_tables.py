"""Tables from small synthetic run csvs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.evaluate import summarize
from regbench.tables import (
    LEGACY_LABEL,
    NOT_IMPLEMENTED,
    POSE_COLUMNS,
    ablation_table,
    format_table,
    generalization_table,
    load_runs,
    not_implemented_row,
    table1,
    write_table,
)


def _runs_frame(method: str, mtre: list[float], status: list[str] | None = None) -> pd.DataFrame:
    n = len(mtre)
    df = pd.DataFrame(
        {
            "xray_id": [f"x{i:03d}" for i in range(n)],
            "method": method,
            "status": status or ["ok"] * n,
            "seconds": np.linspace(1.0, 2.0, n),
            "iterations": 10,
            "mtre_init_mm": 20.0,
            "mtre_mm": mtre,
            "mrpe_mm": np.asarray(mtre) * 2.0,
            "rot_err_deg": 0.1,
            "trans_err_mm": 0.5,
            "legacy_mrpe": np.asarray(mtre) * 4.0,
        }
    )
    for i, column in enumerate(POSE_COLUMNS):
        df[column] = float(i in (0, 5, 10, 15))
    return df


def _write(root: Path, dataset: str, subject: str, df: pd.DataFrame) -> Path:
    path = root / dataset / subject / "runs" / f"{df['method'].iloc[0]}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def run_paths(tmp_path: Path) -> list[Path]:
    return [
        _write(tmp_path, "embedded", "s0", _runs_frame("posenet", [5.0, 0.5, 20.0])),
        _write(tmp_path, "embedded", "s1", _runs_frame("posenet", [0.8, 2.0])),
        _write(
            tmp_path,
            "embedded",
            "s0",
            _runs_frame("ours-so4", [0.1, 0.2, 0.3], ["ok", "ok", "failed"]),
        ),
        _write(tmp_path, "embedded", "s0", _runs_frame("sopi", [math.nan], ["not_implemented"])),
        _write(tmp_path, "deepfluoro", "p1", _runs_frame("posenet", [1.5, 3.0])),
    ]


def test_load_runs_adds_dataset_and_subject(run_paths: list[Path]) -> None:
    runs = load_runs(run_paths)
    assert len(runs) == 11
    assert set(runs["dataset"]) == {"embedded", "deepfluoro"}
    assert sorted(runs.loc[runs["method"] == "posenet", "subject"].unique()) == ["p1", "s0", "s1"]
    assert runs["xray_id"].iloc[0] == "x000"  # ids stay strings


def test_table1_matches_summarize(run_paths: list[Path]) -> None:
    runs = load_runs(run_paths)
    table = table1(runs, dataset_labels={"embedded": "Embedded CT"})
    row = table[(table["Dataset"] == "Embedded CT") & (table["Method"] == "posenet")].iloc[0]
    mtre = np.array([5.0, 0.5, 20.0, 0.8, 2.0])
    expected = summarize(mtre, np.array([1.0, 1.5, 2.0, 1.0, 2.0]), np.array(["ok"] * 5))
    assert row["SMSR (%)"] == pytest.approx(100 * expected["smsr"])
    assert row["Median (mm)"] == pytest.approx(expected["median_mm"])
    assert row["75% (mm)"] == pytest.approx(expected["p75_mm"])
    assert row["95% (mm)"] == pytest.approx(expected["p95_mm"])
    assert row["Run time (s)"] == pytest.approx(expected["median_seconds"])
    assert row["Mean (mm)"] == pytest.approx(expected["mean_mm"])
    assert row["Std (mm)"] == pytest.approx(expected["std_mm"])
    assert row["SR10 (%)"] == pytest.approx(100 * expected["sr10"])
    assert row["SMSR CI low (%)"] == pytest.approx(100 * expected["smsr_ci_low"])
    assert row["Median CI high (mm)"] == pytest.approx(expected["median_ci_high"])
    assert row["N"] == 5 and row["Failed"] == 0
    assert row[LEGACY_LABEL] == pytest.approx(4.0 * expected["median_mm"])
    failed = table[table["Method"] == "ours-so4"].iloc[0]
    assert failed["Failed"] == 1 and failed["SMSR (%)"] == pytest.approx(200 / 3)
    assert generalization_table(runs).equals(table1(runs))


def test_not_implemented_rows(run_paths: list[Path]) -> None:
    runs = load_runs(run_paths)
    table = table1(runs, expected_methods=["posenet", "diffpose", "ours-so4", "sopi"])
    embedded = table[table["Dataset"] == "embedded"]
    assert list(embedded["Method"]) == ["posenet", "diffpose", "ours-so4", "sopi"]
    for method in ("diffpose", "sopi"):  # no csv / rows marked not_implemented
        row = embedded[embedded["Method"] == method].iloc[0]
        assert row["Note"] == NOT_IMPLEMENTED and math.isnan(row["SMSR (%)"])
    deepfluoro = table[table["Dataset"] == "deepfluoro"]
    assert (deepfluoro.loc[deepfluoro["Method"] != "posenet", "Note"] == NOT_IMPLEMENTED).all()
    shown = format_table(table)
    assert (shown.loc[table["Note"] == NOT_IMPLEMENTED, "SMSR (%)"] == "–").all()
    assert not_implemented_row("prost-m")["Note"] == NOT_IMPLEMENTED
    empty = table1(load_runs([]), expected_methods=["posenet"])
    assert list(empty["Note"]) == [NOT_IMPLEMENTED]


def test_ablation_table(run_paths: list[Path]) -> None:
    table = ablation_table(load_runs(run_paths))
    assert list(table.columns[:5]) == ["Dataset", "Method", "SMSR (%)", "Mean (mm)", "Std (mm)"]
    shown = format_table(table)
    assert "Mean ± std (mm)" in shown.columns
    row = shown[(shown["Dataset"] == "embedded") & (shown["Method"] == "ours-so4")].iloc[0]
    assert row["Mean ± std (mm)"] == "0.15 ± 0.07"


def test_ablation_table_pairs_each_row_with_ours_so4_on_the_same_xrays(
    run_paths: list[Path],
) -> None:
    table = ablation_table(load_runs(run_paths), n_boot=200, seed=0).set_index(
        ["Dataset", "Method"]
    )
    mean, low, high = (f"Mean minus ours-so4 {part}(mm)" for part in ("", "CI low ", "CI high "))
    # posenet - ours-so4 on embedded: s0/x000 5.0 - 0.1, s0/x001 0.5 - 0.2; s0/x002 failed for
    # ours-so4 and s1 has no ours-so4 run, so neither pairs.
    posenet = table.loc[("embedded", "posenet")]
    assert posenet[mean] == pytest.approx((4.9 + 0.3) / 2)
    assert 0.3 <= posenet[low] <= posenet[mean] <= posenet[high] <= 4.9
    assert math.isnan(table.loc[("embedded", "ours-so4"), mean])  # the reference itself
    assert math.isnan(table.loc[("deepfluoro", "posenet"), mean])  # no ours-so4 there
    shown = format_table(table.reset_index())
    assert list(shown.columns[-3:]) == [mean, "Mean minus ours-so4 95% CI (mm)", "Note"]
    assert shown.loc[shown["Method"] == "posenet", mean].iloc[0] == "2.600"


def test_missing_column_names_the_file(tmp_path: Path) -> None:
    bad = _runs_frame("posenet", [1.0]).drop(columns="mtre_mm")
    path = _write(tmp_path, "embedded", "s0", bad)
    with pytest.raises(ValueError, match=r"posenet\.csv.*mtre_mm"):
        load_runs([path])


def test_empty_or_unparseable_csv_names_the_file(tmp_path: Path) -> None:
    runs_dir = tmp_path / "embedded" / "s0" / "runs"
    runs_dir.mkdir(parents=True)
    empty = runs_dir / "posenet.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="posenet.csv"):
        load_runs([empty])
    header_only = runs_dir / "diffpose.csv"
    _runs_frame("diffpose", []).to_csv(header_only, index=False)
    with pytest.raises(ValueError, match="diffpose.csv.*no rows"):
        load_runs([header_only])
    with pytest.raises(ValueError, match="runs"):
        load_runs([tmp_path / "posenet.csv"])


def test_write_table_writes_three_files(run_paths: list[Path], tmp_path: Path) -> None:
    table = table1(load_runs(run_paths), expected_methods=["diffpose"])
    paths = write_table(table, tmp_path / "tables" / "table1")
    assert [p.name for p in paths] == ["table1.csv", "table1.md", "table1.tex"]
    assert all(p.exists() for p in paths)
    back = pd.read_csv(paths[0])
    assert len(back) == len(table) and LEGACY_LABEL in back.columns
    md = paths[1].read_text()
    assert md.startswith("| Dataset | Method | SMSR (%) |") and NOT_IMPLEMENTED in md
    tex = paths[2].read_text()
    assert "\\toprule" in tex and "SMSR (\\%)" in tex and "$\\pm$" in tex
    assert not list((tmp_path / "tables").glob(".*"))  # no temporary leftovers
