"""The real Snakemake DAG on a tiny config: every method gets a finite table row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_dag
import torch
import yaml
from conftest import REPO

from regbench.cli import main
from regbench.errors import InputError
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
    assert {"posenet", "diffpose", "bobyqa", "ours-so4", "prost-m", "prost-t"} <= set(implemented)
    for method in implemented:
        row = table[table["Method"] == method]
        assert len(row) == 1, method
        values = row[["SMSR (%)", "Median (mm)", "75% (mm)", "95% (mm)", "Run time (s)"]]
        assert np.isfinite(values.to_numpy(float)).all(), method
    # (Every method is implemented: test_tables checks the "not implemented" row of one
    # without runs.)
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
    # Each iteration once: 0 is the initial pose, LM's iterations follow from 1.
    learned = pd.read_csv(
        finished_run / "results" / "embedded" / "chest" / "runs" / "ours-so4.trajectory.csv"
    )
    for _, one in learned.groupby("xray_id"):
        assert one["iteration"].tolist() == list(range(len(one)))


def test_minimum_capture_training_and_seeds_sections_on_the_finished_run(
    finished_run, tmp_path, capsys
):
    """`bench --sections minimum capture training seeds` on the finished run: one drift row per
    refining method; from the offset 0:0 the capture section reruns the minimum section's
    registrations, from 5:10 it starts away from the truth; the learned similarity retrained
    for 0 and 1 steps, registered from both starts; and retrained with one other training seed,
    registered on every X-ray."""
    out = tmp_path / "bench"
    code = main(
        [
            "bench", "--out", str(out), "--sections", "minimum", "capture", "training", "seeds",
            "--minimum-xrays", "1", "--training-steps", "0", "1",
            "--capture-methods", "ours-so4", "diffpose", "--capture-offsets", "0:0", "5:10",
            "--seed-variants", "ours-so4", "--training-seeds", "1",
            "--runs", str(finished_run / "results" / "embedded" / "chest"), "--threads", "1",
            "--config", str(finished_run / "config.yaml"),
        ]
    )  # fmt: skip
    assert code == 0
    rows = pd.read_csv(out / "bench.csv").set_index(["name", "metric"])["value"]
    for method in ("diffpose", "bobyqa", "ours-so4", "prost-m", "prost-t"):
        drift = rows[method, "median drift mTRE"]
        assert np.isfinite(drift) and drift >= 0, method
    assert ("posenet", "median drift mTRE") not in rows.index
    assert "ground truth" in (out / "bench.md").read_text()
    capture = pd.read_csv(out / "capture.csv", dtype={"xray_id": str})
    minimum = pd.read_csv(out / "minimum.csv", dtype={"xray_id": str}).set_index("method")
    at_truth = capture[capture["offset_deg"] == 0].set_index("method")
    assert (at_truth["mtre_init_mm"] == 0).all()
    for method in ("ours-so4", "diffpose"):
        assert at_truth.loc[method, "mtre_mm"] == minimum.loc[method, "mtre_mm"], method
    away = capture[capture["offset_deg"] == 5]
    assert len(away) == 2 and (away["mtre_init_mm"] > 5).all()
    assert away["mtre_init_mm"].nunique() == 1  # the same start for every method
    assert rows["ours-so4", "SMSR"].size == 2 and "Capture range" in (out / "bench.md").read_text()
    assert (out / "capture.png").stat().st_size > 0
    assert "the run's settings" in (out / "bench.md").read_text()
    shorter = [
        "bench", "--out", str(tmp_path / "shorter"), "--sections", "capture",
        "--capture-methods", "ours-so4", "--capture-offsets", "5:10", "--minimum-xrays", "1",
        "--capture-lm-iterations", "1",
        "--runs", str(finished_run / "results" / "embedded" / "chest"), "--threads", "1",
        "--config", str(finished_run / "config.yaml"),
    ]  # fmt: skip
    assert main(shorter) == 0
    one_pass = pd.read_csv(tmp_path / "shorter" / "capture.csv")
    own = away.set_index("method").loc["ours-so4"]
    assert one_pass["mtre_init_mm"].item() == own["mtre_init_mm"]  # the same start,
    assert one_pass["mtre_mm"].item() != own["mtre_mm"]  # a shorter first pass
    assert "LM's first pass 1 iterations" in (tmp_path / "shorter" / "bench.md").read_text()
    unknown = [
        "bench", "--out", str(tmp_path / "unknown"), "--sections", "capture",
        "--capture-methods", "ours-so4", "no-such-method",
        "--runs", str(finished_run / "results" / "embedded" / "chest"), "--threads", "1",
        "--config", str(finished_run / "config.yaml"),
    ]  # fmt: skip
    assert main(unknown) != 0
    assert "no-such-method" in capsys.readouterr().err
    assert not (tmp_path / "unknown" / "capture.csv").exists()
    curve = pd.read_csv(out / "training.csv")
    assert set(curve["steps"]) == {0, 1} and set(curve["start"]) == {"regressor", "ground truth"}
    assert np.isfinite(curve["mtre_mm"]).all()
    assert (out / "training_curve.png").stat().st_size > 0
    spread = pd.read_csv(out / "seeds.csv", dtype={"xray_id": str})
    run = pd.read_csv(
        finished_run / "results" / "embedded" / "chest" / "runs" / "ours-so4.csv",
        dtype={"xray_id": str},
    )
    own = spread[spread["training_seed"] == 0]
    assert own["mtre_mm"].tolist() == run["mtre_mm"].tolist()
    again = spread[spread["training_seed"] == 1]
    assert again["xray_id"].tolist() == run["xray_id"].tolist()
    assert np.isfinite(again["mtre_mm"]).all()
    assert "Spread between trainings" in (out / "bench.md").read_text()


def test_latents_section_registers_one_model_under_each_geometry(finished_run, tmp_path, capsys):
    """`bench --sections latents`: ours-so4's model under its own geometry (always added) with
    its features on repeats the run's registration; with the features off the encoder has no
    share in the embedding; with an offset every geometry starts from the same moved truth; an
    unknown geometry is named and leaves no csv."""
    subject = finished_run / "results" / "embedded" / "chest"
    common = [
        "--runs", str(subject), "--threads", "1", "--config", str(finished_run / "config.yaml"),
        "--minimum-xrays", "1", "--sections", "latents",
    ]  # fmt: skip
    out = tmp_path / "latents"
    args = ["bench", "--out", str(out), "--latent-geometries", "euclidean"]  # + its own
    assert main([*args, *common]) == 0
    frame = pd.read_csv(out / "latents.csv", dtype={"xray_id": str}).set_index(
        ["geometry", "features"]
    )
    assert len(frame) == 4 and (frame["model"] == "ours-so4").all()
    assert set(frame.index.get_level_values("geometry")) == {"spherical", "euclidean"}
    run = pd.read_csv(subject / "runs" / "ours-so4.csv", dtype={"xray_id": str}).iloc[0]
    own = frame.loc[("spherical", "on")]
    assert own["xray_id"] == run["xray_id"] and own["mtre_mm"] == run["mtre_mm"]
    assert np.isfinite(frame["mtre_mm"]).all()
    assert (frame.xs("off", level="features")["encoder_share"] == 0).all()
    assert 0 < own["encoder_share"] < 1
    rows = pd.read_csv(out / "bench.csv").set_index(["name", "metric"])["value"]
    assert rows["ours-so4 model, spherical, features off", "mean minus own geometry"] == 0
    assert "each latent geometry" in (out / "bench.md").read_text()
    away = tmp_path / "away"
    assert main(["bench", "--out", str(away), "--latent-offset", "5:10", *common]) == 0
    moved = pd.read_csv(away / "latents.csv")
    assert moved["mtre_init_mm"].nunique() == 1 and (moved["mtre_init_mm"] > 5).all()
    assert np.isfinite(moved["mtre_mm"]).all()
    bad = tmp_path / "bad"
    assert main(["bench", "--out", str(bad), "--latent-geometries", "toroidal", *common]) != 0
    assert "toroidal" in capsys.readouterr().err
    assert not (bad / "latents.csv").exists()


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
    # The backbone study trains from the same seed on the same pool: equal but for its clock.
    studies = [
        pd.read_csv(d / RUNS / "backbones.csv").drop(columns="train_seconds")
        for d in (finished_run, other)
    ]
    pd.testing.assert_frame_equal(*studies, check_exact=True)
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


def copy_with_config(finished_run: Path, dest: Path, **sections: dict) -> tuple[Path, str]:
    """A copy of the finished run whose config has ``sections`` updated; returns it and the
    original config text."""
    shutil.copytree(finished_run, dest, symlinks=True)
    original = (dest / "config.yaml").read_text()
    cfg = yaml.safe_load(original)
    for name, values in sections.items():
        cfg[name].update(values)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest, original


def kill_while_making(work: Path, target: Path, started: Callable[[], bool], what: str) -> None:
    """Run snakemake for ``target`` and SIGKILL its whole process group once ``started()``;
    then release the lock the killed run left."""
    cmd = [*tiny_dag.snakemake_command(work), "--cores", "2", str(target.relative_to(work))]
    job = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(started, 300, what)
        assert job.poll() is None, f"the job ended before it could be killed ({what})"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert not target.exists()
    assert snakemake(work, "--unlock").returncode == 0


def test_killed_registration_leaves_no_result_and_reruns_to_the_same_rows(finished_run, tmp_path):
    """SIGKILL in the middle of a register job (its config asks for a longer DiffPose so that
    there is time to kill it)."""
    before = comparable(finished_run / RUNS / "diffpose.csv")
    slow = {"max_iterations": 400, "patience": 400}
    work, original = copy_with_config(finished_run, tmp_path / "killed", diffpose=slow)
    target = work / RUNS / "diffpose.csv"
    log = work / "results" / "logs" / "register" / "embedded" / "chest" / "diffpose.log"
    # The job has started and finished one X-ray (its log is rewritten per job).
    first_xray = lambda: not target.exists() and log.exists() and " mTRE " in log.read_text()  # noqa: E731
    kill_while_making(work, target, first_xray, "the first registered X-ray")

    # Nothing that looks complete, no temporary leftovers.
    leftovers = sorted(p.name for p in (work / RUNS).glob("*diffpose.csv*"))
    assert leftovers == [], leftovers
    dry = snakemake(work, "-n", "--quiet", "rules")
    assert dry.returncode == 0 and "register" in dry.stdout + dry.stderr
    # Back to the first config, the rerun registration gives the first run's rows exactly.
    (work / "config.yaml").write_text(original)
    rerun = snakemake(work, "--rerun-incomplete", str(RUNS / "diffpose.csv"))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    pd.testing.assert_frame_equal(comparable(target), before, check_exact=True)


def test_training_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    finished_run, tmp_path
):
    """SIGKILL a train_regressor job after its first resumable checkpoint; the rerun continues
    from it and ends with the weights of an uninterrupted run of the same config."""
    longer = {"steps": 24, "checkpoint_every": 3}
    model = RUNS.parent / "models" / "regressor.pt"
    straight, _ = copy_with_config(finished_run, tmp_path / "straight", regressor=longer)
    done = snakemake(straight, str(model))
    assert done.returncode == 0, done.stderr[-4000:]

    work, _ = copy_with_config(finished_run, tmp_path / "killed", regressor=longer)
    partial = (work / model).with_suffix(".partial")

    def checkpointed() -> bool:
        if not partial.exists():
            return False
        try:
            return load_checkpoint(partial)["step"] >= 3
        except InputError:  # being renamed into place
            return False

    kill_while_making(work, work / model, checkpointed, "the first training checkpoint")
    step = load_checkpoint(partial)["step"]
    assert 3 <= step < 24
    rerun = snakemake(work, "--rerun-incomplete", str(model))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    log = (work / "results" / "logs" / "train_regressor" / "embedded" / "chest.log").read_text()
    assert f"resuming training at step {step}" in log, log[-2000:]
    weights, reference = (load_checkpoint(d / model)["state_dict"] for d in (work, straight))
    assert weights.keys() == reference.keys()
    for key in weights:
        assert torch.equal(weights[key], reference[key]), key


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
    # A registration-only key of the learned similarities (its LM) retrains nothing.
    cfg["lm"]["iterations"] = 4
    (finished_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake(finished_run, "-n", "--quiet", "rules")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out
    assert "optimizer_study" in out and "register" in out, out
    for rule in ["train_regressor", "train_similarity"]:
        assert rule not in out, out
