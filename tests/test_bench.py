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
            bench.row("seeds", name, k, "mean mTRE", v, "mm", torch.device("cpu"))
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


def test_offset_start_turns_about_the_isocentre_and_shifts_by_the_offset():
    """The start is the truth moved by exactly ``deg`` about the CT's centre and ``mm`` of
    shift; a generator seeded alike gives the same directions at every offset (scaled)."""
    from regbench.drift import offset_start
    from regbench.geometry.poses import invert, se3_log

    truth = torch.eye(4, dtype=torch.float64)
    truth[:3, 3] = torch.tensor([0.0, 0.0, 850.0], dtype=torch.float64)
    small = offset_start(truth, torch.Generator().manual_seed(3), 5.0, 10.0)
    large = offset_start(truth, torch.Generator().manual_seed(3), 10.0, 20.0)
    for start, deg, mm in ((small, 5.0, 10.0), (large, 10.0, 20.0)):
        motion = start @ invert(truth)[0]  # the world motion exp(xi)
        angle = torch.rad2deg(torch.arccos((motion[:3, :3].trace() - 1) / 2))
        assert torch.isclose(angle, torch.tensor(deg, dtype=torch.float64), atol=1e-9)
        # The shift is the tangent's translation: exp couples it with the rotation at second
        # order (under 0.1% at 10 degrees).
        shift = motion[:3, 3].norm().item()
        assert abs(shift - mm) < 1e-3 * mm and shift != mm
    xi_small = se3_log(small @ invert(truth)[0])
    xi_large = se3_log(large @ invert(truth)[0])
    assert torch.allclose(xi_large[..., :3], 2 * xi_small[..., :3], atol=1e-9)
    assert torch.equal(offset_start(truth, torch.Generator(), 0.0, 0.0), truth)


def test_capture_markdown_gives_smsr_and_median_per_offset():
    rows = []
    for name, k, deg, mm, start, smsr, median in (
        ("a", 0, 5.0, 10.0, 12.0, 100.0, 0.1),
        ("a", 1, 10.0, 20.0, 24.0, 50.0, 1.5),
        ("b", 0, 5.0, 10.0, 12.0, 90.0, 0.2),
        ("b", 1, 10.0, 20.0, 24.0, 40.0, 2.0),
    ):
        for metric, value in (
            ("offset deg", deg), ("offset mm", mm), ("X-rays", 10), ("LM iterations", 30),
            ("start median mTRE", start), ("SMSR", smsr), ("median mTRE", median),
            ("mean mTRE", median),
        ):  # fmt: skip
            rows.append(bench.row("capture", name, k, metric, value, "", torch.device("cpu")))
    frame = pd.DataFrame(rows)
    text = bench.capture_markdown(frame)
    assert "(10 X-rays, LM's first pass 30 iterations;" in text
    assert "| method | 5 deg / 10 mm (start 12.0 mm) | 10 deg / 20 mm (start 24.0 mm) |" in text
    assert "| a | 100 / 0.1 / 0.1 | 50 / 1.5 / 1.5 |" in text
    assert "| b | 90 / 0.2 / 0.2 | 40 / 2 / 2 |" in text
    assert text in summary_markdown(frame)


@pytest.mark.parametrize(("bad", "why"), [("5", "is not DEG:MM"), ("a:b", "is not DEG:MM"),
                                          ("1:-10", "magnitudes")])  # fmt: skip
def test_capture_offsets_must_be_deg_colon_mm(bad, why, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sections", "capture", "--capture-offsets", bad])
    err = capsys.readouterr().err
    assert f"{bad!r} is not DEG:MM" in err if why != "magnitudes" else "magnitudes" in err
