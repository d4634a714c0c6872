"""The real DAG on the tiny config, for the report and SLURM tests.

The tiny config is tests/e2e/config.yaml with fewer methods (METHODS): one baseline and one
learned method still reach every rule, table and figure (ours-so4 brings train_similarity,
optimizer_study, Table 3's ablation row and the optimizers figure) in under half the jobs;
test_e2e runs every method. ``local_run`` runs
it once per test session with local execution and hands the finished working directory to
every caller, which only reads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "e2e" / "config.yaml"
METHODS = ["posenet", "ours-so4"]

_runs: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}


def snakemake_command(workdir: Path) -> list[str]:
    """The command line that runs this checkout's Snakefile in ``workdir`` (no options)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
    ]


def snakemake(
    workdir: Path, *args: str, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """``python -m snakemake`` on this checkout's Snakefile in ``workdir``."""
    cmd = [*snakemake_command(workdir), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ)
    )


def new_workdir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh working directory whose config.yaml is the tiny config (METHODS only)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    missing = set(METHODS) - set(config["methods"])
    assert not missing, f"{TINY_CONFIG} no longer lists {sorted(missing)}: update METHODS"
    config["methods"] = METHODS
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DAG run locally on 2 cores (the default target, so it ends with the report)."""
    if "local" not in _runs:  # run once, also when it fails (every caller then fails on it)
        workdir = new_workdir(tmp_path_factory, "tiny-local")
        _runs["local"] = workdir, snakemake(workdir, "--cores", "2")
    workdir, result = _runs["local"]
    assert result.returncode == 0, result.stderr[-6000:]
    return workdir
