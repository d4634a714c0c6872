"""`regbench bench`: every section runs on a tiny problem and writes its csv and summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from regbench import bench
from regbench.bench import dag_rows, seeds_markdown, summary_markdown
from regbench.cli import bench as bench_verb
from regbench.cli import main


def test_dag_section_sums_snakemake_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "register" / "d" / "s").mkdir(parents=True)
    for name, seconds, rss in (("a", 2.5, 900.0), ("b", 1.5, 1200.0)):
        row = f"{seconds}\t0:00:02\t{rss}\t1\t1\t1\t0\t0\t50\t1\n"
        (tmp_path / "register" / "d" / "s" / f"{name}.tsv").write_text(header + row)
    (tmp_path / "tables.tsv").write_text(header + "0.5\t0:00:00\t300\t1\t1\t1\t0\t0\t50\t1\n")
    rows = pd.DataFrame(dag_rows(tmp_path, torch.device("cpu")))
    got = rows.set_index(["name", "metric"])["value"]
    assert got["register", "jobs"] == 2 and got["register", "total seconds"] == 4.0
    assert got["register", "max RSS"] == 1200.0 and got["tables", "total seconds"] == 0.5
    assert "| register | 2 | 4 | 89% | 1200 |" in summary_markdown(rows)

    # Remeasuring one section keeps the others already in bench.csv.
    out = tmp_path / "bench"
    out.mkdir()
    kept = {"section": "render", "name": "x", "size": 64, "metric": "forward ms", "value": 1.0}
    pd.DataFrame([{**kept, "unit": "ms", "device": "cpu"}]).to_csv(out / "bench.csv", index=False)
    args = ["bench", "--out", str(out), "--sections", "dag", "--benchmarks", str(tmp_path)]
    assert main([*args, "--config", str(REPO / "config.yaml")]) == 0
    written = pd.read_csv(out / "bench.csv")
    assert written["section"].tolist()[0] == "render" and set(written["section"]) == {
        "render",
        "dag",
    }
    assert bench_verb.SECTIONS == bench.SECTIONS


@pytest.mark.parametrize("sections", [["render", "jacobian"], ["convergence"]])
def test_bench_command_writes_csv_and_summary(tmp_path, sections):
    out = tmp_path / "bench"
    code = main(
        [
            "bench", "--out", str(out), "--config", str(REPO / "tests" / "e2e" / "config.yaml"),
            "--sections", *sections, "--sizes", "16", "--jacobian-size", "16",
            "--spacing-mm", "8", "--n-points", "16", "--repeats", "1", "--xrays", "1",
            "--lm-iterations", "5", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0
    rows = pd.read_csv(out / "bench.csv")
    assert set(rows["section"]) == set(sections)
    summary = (out / "bench.md").read_text()
    if "render" in sections:
        rel = rows[rows["metric"] == "relative L2 to diffdrr trilinear"].set_index("name")["value"]
        assert rel["regbench compiled"] < 1e-4 and rel["regbench torch"] < 1e-4
        assert (rows[rows["metric"].str.endswith(" ms")]["value"] > 0).all()
        assert "speed-up" in summary and "Pose Jacobian" in summary
    else:
        table = rows.set_index(["name", "metric"])["value"]
        lm = "LM (compiled projector)"
        assert table[lm, "X-rays"] == 1 and table[lm, "samples per ray"] == 64
        assert (out / "convergence.trajectory.csv").stat().st_size > 0
        assert "sub-millimetre" in summary


def test_bench_names_an_overlay_config_without_the_embedded_ct(tmp_path, capsys):
    """An overlay (the workflow completes it with config.yaml) is refused by name, before any
    output is written."""
    overlay = REPO / "workflow" / "configs" / "validation.yaml"
    out = tmp_path / "bench"
    assert main(["bench", "--config", str(overlay), "--out", str(out), "--sections", "dag"]) == 2
    err = capsys.readouterr().err
    assert str(overlay) in err and "datasets.embedded" in err
    assert not out.exists()


def test_seeds_summary_gives_the_spread_and_paired_differences():
    """Two methods, three training seeds: mean ± sample std over trainings, and the second
    method's difference to the first seed by seed (hand-computed)."""
    means = {"a": [0.2, 0.3, 0.4], "b": [0.1, 0.4, 0.3]}
    rows = pd.DataFrame(
        [
            bench._row("seeds", name, k, "mean mTRE", v, "mm", torch.device("cpu"))
            for name, values in means.items()
            for k, v in enumerate(values)
        ]
    )
    text = seeds_markdown(rows)
    assert "| a | 0.200 | 0.300 | 0.400 | 0.300 ± 0.100 | – | – |" in text
    # b - a = (-0.1, +0.1, -0.1): mean -0.033, std 0.115; below a on 2 of 3.
    assert "| b | 0.100 | 0.400 | 0.300 | 0.267 ± 0.153 | -0.033 ± 0.115 | 2 of 3 |" in text
    assert text in summary_markdown(rows)


def test_drift_splits_landmark_errors_into_depth_and_in_plane():
    """A pose moved 3 mm along the principal ray and 4 mm across it: mTRE 5, depth 3,
    in-plane 4 (landmarks in the camera frame move by the inverse motion)."""
    from regbench.drift import landmark_errors

    axis = np.array([0.0, 0.0, 1.0])
    gt = np.eye(4)
    est = np.eye(4)
    est[:3, 3] = [4.0, 0.0, 3.0]
    points = np.random.default_rng(0).normal(size=(6, 3)) * 50
    mtre, depth, in_plane = landmark_errors(est, gt, points, axis)
    assert np.isclose(mtre, 5.0) and np.isclose(depth, 3.0) and np.isclose(in_plane, 4.0)
