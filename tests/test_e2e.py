"""The real Snakemake DAG on a tiny config: every method gets a finite table row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_dag
import torch
import yaml
from conftest import REPO

from regbench.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e


def snakemake(workdir, *args):
    return tiny_dag.snakemake(workdir, "--cores", "2", *args)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    shutil.copy(REPO / "tests" / "e2e" / "config.yaml", workdir / "config.yaml")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_tables_have_a_finite_row_per_method(finished_run):
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    table = pd.read_csv(finished_run / "results" / "tables" / "table1.csv")
    from regbench.methods import IMPLEMENTED

    implemented = [m for m in cfg["methods"] if m in IMPLEMENTED]
    assert {"posenet", "diffpose", "bobyqa", "ours-so4", "prost"} <= set(implemented)
    for method in implemented:
        row = table[table["Method"] == method]
        assert len(row) == 1, method
        values = row[["SMSR (%)", "Median (mm)", "75% (mm)", "95% (mm)", "Run time (s)"]]
        assert np.isfinite(values.to_numpy(float)).all(), method
    # A configured method without an implementation says so instead of printing numbers.
    assert "sopi" in cfg["methods"] and "sopi" not in IMPLEMENTED
    row = table[table["Method"] == "sopi"]
    assert row["Note"].iloc[0] == "not implemented" and row["SMSR (%)"].isna().all()
    for name in ["table1.md", "table1.tex", "table3.md", "table3.csv"]:
        assert (finished_run / "results" / "tables" / name).stat().st_size > 0
    for stem in ["mtre_distribution", "convergence", "qualitative", "optimizers"]:
        for ext in ["png", "pdf"]:
            assert (finished_run / "results" / "figures" / f"{stem}.{ext}").stat().st_size > 0


def test_run_csvs_follow_the_data_contract(finished_run):
    runs = pd.read_csv(finished_run / "results" / "embedded" / "chest" / "runs" / "diffpose.csv")
    required = [
        "xray_id",
        "method",
        "status",
        "seconds",
        "iterations",
        "mtre_init_mm",
        "mtre_mm",
        "mrpe_mm",
        "rot_err_deg",
        "trans_err_mm",
    ] + [f"est_m{i}{j}" for i in range(4) for j in range(4)]
    assert set(required) <= set(runs.columns)
    assert len(runs) == 3 and set(runs["status"]) <= {"ok", "failed"}
    traj = pd.read_csv(
        finished_run / "results" / "embedded" / "chest" / "runs" / "diffpose.trajectory.csv"
    )
    assert (traj.groupby("xray_id")["iteration"].min() == 0).all()


RUNS = Path("results/embedded/chest/runs")
TIMING_COLUMNS = ["seconds"]


def comparable(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


def test_two_runs_of_the_tiny_config_are_identical_bit_for_bit(finished_run, tmp_path_factory):
    """This run and the report's run (tiny_dag.local_run, the same config with fewer methods)
    share their posenet and ours-so4 jobs: the same settings, so the same bits everywhere."""
    other = tiny_dag.local_run(tmp_path_factory)
    shared = ["posenet", "ours-so4"]
    assert set(shared) <= set(tiny_dag.METHODS)
    for method in shared:
        for name in (f"{method}.csv", f"{method}.trajectory.csv"):
            pd.testing.assert_frame_equal(
                comparable(finished_run / RUNS / name),
                comparable(other / RUNS / name),
                check_exact=True,
            )
    for name in ("regressor.pt", "similarity-ours-so4.pt"):
        weights_a, weights_b = (
            load_checkpoint(d / RUNS.parent / "models" / name)["state_dict"]
            for d in (finished_run, other)
        )
        assert weights_a.keys() == weights_b.keys() and weights_a, name
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (name, key)
    table_a = pd.read_csv(finished_run / "results" / "tables" / "table1.csv")
    table_b = pd.read_csv(other / "results" / "tables" / "table1.csv")
    rows = [
        t[t["Method"].isin(shared)].drop(columns=["Run time (s)"]).reset_index(drop=True)
        for t in (table_a, table_b)
    ]
    pd.testing.assert_frame_equal(*rows, check_exact=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_killed_registration_leaves_no_result_and_reruns_to_the_same_rows(finished_run, tmp_path):
    """SIGKILL the whole snakemake process group in the middle of a register job (in a copy of
    the finished run, whose config asks for a longer DiffPose so there is time to kill it)."""
    work = tmp_path / "killed"
    shutil.copytree(finished_run, work, symlinks=True)
    target = work / RUNS / "diffpose.csv"
    before = comparable(target)
    log = work / "results" / "logs" / "register" / "embedded" / "chest" / "diffpose.log"
    config_path = work / "config.yaml"
    original = config_path.read_text()
    cfg = yaml.safe_load(original)
    cfg["diffpose"].update(max_iterations=400, patience=400)
    config_path.write_text(yaml.safe_dump(cfg))
    cmd = [
        *tiny_dag.snakemake_command(work),
        "--cores",
        "2",
        str(RUNS / "diffpose.csv"),
    ]
    job = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        # The job has started and finished one X-ray (its log is rewritten per job).
        wait_for(
            lambda: not target.exists() and log.exists() and " mTRE " in log.read_text(),
            300,
            "the first registered X-ray",
        )
        assert job.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    # Nothing that looks complete, no temporary leftovers.
    leftovers = sorted(p.name for p in (work / RUNS).glob("*diffpose.csv*"))
    assert leftovers == [], leftovers
    # The killed snakemake holds the lock; once released the interrupted job is planned again.
    assert snakemake(work, "--unlock").returncode == 0
    dry = snakemake(work, "-n", "--quiet", "rules")
    assert dry.returncode == 0 and "register" in dry.stdout + dry.stderr
    # Back to the first config, the rerun registration gives the first run's rows exactly.
    config_path.write_text(original)
    rerun = snakemake(work, "--rerun-incomplete", str(RUNS / "diffpose.csv"))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    pd.testing.assert_frame_equal(comparable(target), before, check_exact=True)


def test_rerun_is_a_no_op_and_config_changes_rerun_only_affected_jobs(finished_run):
    dry = snakemake(finished_run, "-n")
    assert dry.returncode == 0
    assert "Nothing to be done" in dry.stdout + dry.stderr
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    cfg["diffpose"]["max_iterations"] = 9
    (finished_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake(finished_run, "-n", "--quiet", "rules")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out
    assert "register" in out and "tables" in out
    for rule in ["prepare", "simulate", "train_regressor"]:
        assert rule not in out, out
