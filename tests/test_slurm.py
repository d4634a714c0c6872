"""SLURM stage: the tiny DAG (tests/e2e/config.yaml) run with --profile workflow/profiles/slurm
on a real single-node SLURM cluster on localhost (tests/slurm/slurm-localhost.sh: munge,
MariaDB + slurmdbd so that sacct works, slurmctld, slurmd). Every job except the local rule
`all` must be submitted to and completed by SLURM (sacct states), and the tables must equal a
local run of the same config.

It needs root on Debian (the script apt-get installs the daemons when missing) and PyPI (the
executor plugin is pip-installed into a temporary folder for this stage only: with slurm-client
installed but no controller running, an installed plugin slows every snakemake start by ~10 s).
Where that is impossible the stage fails; REGBENCH_SKIP_SLURM=1 skips it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_dag import REPO, local_run, new_workdir, snakemake

pytestmark = pytest.mark.e2e

PLUGIN_PINS = (
    "snakemake-executor-plugin-slurm==2.8.0",
    "snakemake-executor-plugin-slurm-jobstep==0.6.1",
)
PROFILE = REPO / "workflow" / "profiles" / "slurm"
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "slurm-localhost.sh"
SKIP_VARIABLE = "REGBENCH_SKIP_SLURM"
# Run-time columns differ between runs; every other column must be equal.
TIMING_COLUMNS = {"Run time (s)", "seconds", "train_seconds", "Train time (s)"}
CI_CPUS = 2  # the localhost node (this machine)


def rule_threads() -> dict[str, int]:
    """Each rule's own ``threads:`` (1 when unset), read from the rule files; a rule made with
    ``use rule A as B`` has A's unless it sets its own."""
    texts = [path.read_text() for path in sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    threads, derived = {}, []
    for text in texts:
        for block in re.finditer(
            r"^(?:rule (\w+)|use rule (\w+) as (\w+) with):\n(.*?)(?=^\S|\Z)", text, re.M | re.S
        ):
            found = re.search(r"^\s+threads:\s*(\d+)\s*$", block[4], re.M)
            if block[1]:
                threads[block[1]] = int(found[1]) if found else 1
            else:
                derived.append((block[3], block[2], int(found[1]) if found else None))
    for name, parent, own in derived:
        threads[name] = own if own is not None else threads.get(parent, 1)
    return threads


def ci_overrides() -> list[str]:
    """What the SLURM stage changes in the profile: threads as in the local run (--cores 2),
    which the 2-CPU node can schedule (the profile's 4 training threads could not) and which
    keeps torch's arithmetic, hence the tables, identical; and a 5 s first status check."""
    threads = [f"{rule}={min(n, CI_CPUS)}" for rule, n in sorted(rule_threads().items())]
    return ["--set-threads", *threads, "--slurm-init-seconds-before-status-checks", "5"]


def test_profile_sets_threads_memory_and_runtime_for_every_rule():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["jobs"] >= 1
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
    assert {"prepare", "train_regressor", "register", "tables"} <= set(rule_threads())
    for rule in rule_threads():
        assert rule in profile["set-threads"], f"profile sets no threads for rule {rule}"
        assert {"mem_mb", "runtime"} <= set(profile["set-resources"][rule]), rule


# ---------------------------------------------------------------- the cluster


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def cannot_host_slurm() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        return "not Debian (no apt-get)"
    return None


@pytest.fixture(scope="module")
def cluster():
    """The localhost cluster, up for this module; its daemons are stopped by PID afterwards."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: SLURM stage skipped")
    reason = cannot_host_slurm()
    if reason:
        pytest.fail(
            f"this machine cannot host the SLURM test cluster ({reason}); "
            f"set {SKIP_VARIABLE}=1 to skip the SLURM stage"
        )
    started = time.monotonic()
    try:
        start = run(["bash", str(CLUSTER_SCRIPT), "start"], timeout=900)
        assert start.returncode == 0, (
            f"{CLUSTER_SCRIPT.name} start failed:\n{start.stdout[-3000:]}{start.stderr[-5000:]}"
        )
        yield time.monotonic() - started
    finally:
        stop = run(["bash", str(CLUSTER_SCRIPT), "stop"], timeout=300)
        print(stop.stderr, file=sys.stderr)


@pytest.fixture(scope="module")
def plugin_env(cluster, tmp_path_factory) -> dict:
    """Environment whose PYTHONPATH holds the pinned plugin (installed for this stage only)."""
    target = tmp_path_factory.mktemp("slurm-plugin")
    install = run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
        + list(PLUGIN_PINS),
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH")) if p)
    check = run(
        [sys.executable, "-c", "import snakemake_executor_plugin_slurm"], timeout=120, env=env
    )
    assert check.returncode == 0, f"plugin not importable (missing dependency?):\n{check.stderr}"
    return env


def sacct(*args: str) -> list[dict]:
    fields = ["JobID", "JobName", "State", "ExitCode", "Comment", "AllocCPUS", "Elapsed"]
    out = run(["sacct", "-X", "-P", "-n", "-o", ",".join(fields), *args], timeout=60)
    assert out.returncode == 0, out.stderr
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def slurm_run(plugin_env, tmp_path_factory):
    workdir = new_workdir(tmp_path_factory, "tiny-slurm")
    started = time.monotonic()
    result = snakemake(
        workdir, "--profile", str(PROFILE), *ci_overrides(), env=plugin_env, timeout=1500
    )
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    slurm_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    return {"workdir": workdir, "log": log, "seconds": seconds, "slurm_ids": slurm_ids}


def planned_jobs(log: str) -> Counter:
    """Snakemake's 'Job stats' table of the run: jobs per rule."""
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    rows = re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)
    return Counter({rule: int(n) for rule, n in rows})


def test_every_job_was_submitted_to_and_completed_by_slurm(cluster, slurm_run, capsys):
    planned = planned_jobs(slurm_run["log"])
    local = Counter(re.findall(r"^localrule (\w+):", slurm_run["log"], re.M))
    assert local == Counter({"all": 1}), f"jobs run outside SLURM: {local}"
    remote = planned - local
    assert remote, "no jobs planned"

    jobs = sacct("-j", ",".join(slurm_run["slurm_ids"]))
    assert len(jobs) == len(slurm_run["slurm_ids"]) == sum(remote.values())
    not_done = [j for j in jobs if (j["State"], j["ExitCode"]) != ("COMPLETED", "0:0")]
    assert not not_done, f"SLURM jobs that did not complete: {not_done}"
    # The plugin names every job of a run after the run's id and puts the rule in the comment.
    (run_id,) = {j["JobName"] for j in jobs}
    assert len(sacct("--name", run_id, "-S", "now-1days")) == len(jobs)
    by_rule = Counter(re.match(r"rule_(.+?)(_wildcards_.*)?$", j["Comment"])[1] for j in jobs)
    assert by_rule == remote

    with capsys.disabled():
        print(
            f"\n[SLURM stage] {len(jobs)} jobs through SLURM ({dict(sorted(by_rule.items()))}), "
            f"all COMPLETED; snakemake --profile workflow/profiles/slurm took "
            f"{slurm_run['seconds']:.0f} s, cluster start {cluster:.0f} s"
        )


def comparable(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.drop(columns=[c for c in frame.columns if c in TIMING_COLUMNS])


def test_results_equal_a_local_run(slurm_run, tmp_path_factory):
    local = local_run(tmp_path_factory)
    remote = slurm_run["workdir"]
    csvs = sorted(
        p.relative_to(local)
        for pattern in ("*/*/runs/*.csv", "tables/*.csv")  # runs, trajectories, tables
        for p in (local / "results").glob(pattern)
    )
    assert Path("results/tables/table1.csv") in csvs and len(csvs) > 1
    for rel in csvs:
        # Seeded and deterministic on CPU: equal up to float noise (in practice bit for bit).
        pd.testing.assert_frame_equal(
            comparable(local / rel), comparable(remote / rel), check_exact=False, rtol=0, atol=1e-9
        )
    assert (remote / "results" / "report.html").stat().st_size > 0


# ---------------------------------------------------------------- GPUs


def dry_run_resources(workdir: Path, *args: str) -> dict[str, list[str]]:
    """Rule -> the 'resources:' lines of its jobs in a dry run."""
    result = snakemake(workdir, "-n", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    found: dict[str, list[str]] = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:)", result.stdout + result.stderr, flags=re.M):
        head = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head and res:
            found.setdefault(head[1], []).append(res[1])
    return found


def test_training_and_registration_request_a_gpu_when_the_config_asks(tmp_path_factory):
    workdir = new_workdir(tmp_path_factory, "gpu-dry-run")
    # The profile's resources without its executor, so no plugin or cluster is needed.
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    del profile["executor"]
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    jobs = dry_run_resources(
        workdir, "--profile", str(workdir / "profile"), "--config", "device=cuda"
    )
    gpu_rules = {r for r in jobs if r.startswith("train") or r == "register"}
    assert gpu_rules >= {"train_regressor", "register"}
    for rule in gpu_rules:  # (device: cpu asks for none: the SLURM stage's node has no GPU)
        for line in jobs[rule]:
            assert re.search(r"\bgpu=1\b", line), f"{rule} asks for no GPU: {line}"
