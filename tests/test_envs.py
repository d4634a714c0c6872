"""Static checks of the conda environment (conda itself cannot run here): envs/regbench.yaml
parses, pins every dependency exactly, agrees with pyproject.toml, and every `conda:` path a
rule names exists."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ENV_FILE = REPO / "envs" / "regbench.yaml"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
CONDA_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*==?\s*(?P<version>[0-9][A-Za-z0-9_.+!\-]*)$")


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def conda_and_pip(env: dict) -> tuple[list[str], list[str]]:
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected dependency section {dep}"
            pip.extend(dep["pip"])
        else:
            conda.append(str(dep))
    return conda, pip


def exact_pin(req: Requirement) -> str | None:
    """The version of an exact ``==`` pin (no wildcard), else None."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
        return specs[0].version
    return None


def key(req: Requirement) -> tuple[str, frozenset[str]]:
    return canonicalize_name(req.name), frozenset(req.extras)


def test_env_file_parses_with_conda_forge_only(env):
    assert env["name"] == "regbench"
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda, pip = conda_and_pip(env)
    assert conda and pip


def test_every_dependency_is_pinned(env):
    conda, pip = conda_and_pip(env)
    for dep in conda:
        assert CONDA_PIN.match(dep), f"conda dependency not pinned to one version: {dep!r}"
    for dep in pip:
        req = Requirement(dep)
        assert exact_pin(req) and not req.marker and not req.url, (
            f"pip dependency not pinned: {dep!r}"
        )


def test_pins_agree_with_pyproject(env, project):
    _, pip = conda_and_pip(env)
    in_env = {key(r): exact_pin(r) for r in map(Requirement, pip)}
    in_project = {key(r): exact_pin(r) for r in map(Requirement, project["dependencies"])}
    assert all(in_project.values()), f"pyproject.toml has unpinned dependencies: {in_project}"
    assert len(in_env) == len(pip), "a pip dependency is listed twice"
    only_env = {
        f"{n}{sorted(e) or ''}=={v}" for (n, e), v in in_env.items() if in_project.get((n, e)) != v
    }
    only_project = {
        f"{n}{sorted(e) or ''}=={v}" for (n, e), v in in_project.items() if in_env.get((n, e)) != v
    }
    assert not only_env and not only_project, (
        f"envs/regbench.yaml and pyproject.toml disagree: env {sorted(only_env)}, "
        f"pyproject {sorted(only_project)}"
    )


def test_python_and_pip_pins_satisfy_pyproject(env, project):
    conda, _ = conda_and_pip(env)
    pins = {m["name"]: m["version"] for m in map(CONDA_PIN.match, conda)}
    assert set(pins) >= {"python", "pip"}, conda
    assert Version(pins["python"]) in SpecifierSet(project["requires-python"])


def conda_directives(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every ``conda:`` directive in a Snakefile, value as written."""
    lines = path.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s+conda:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(1).strip()
        j = i
        while not value and j + 1 < len(lines):  # value on the next non-empty line
            j += 1
            value = lines[j].strip()
        found.append((i + 1, value.rstrip(",")))
    return found


def test_every_conda_path_a_rule_names_exists():
    seen = 0
    for path in RULE_FILES:
        directives = conda_directives(path)
        commands = re.findall(r"^\s+(?:shell|script|notebook|wrapper):", path.read_text(), re.M)
        assert len(directives) == len(commands), f"{path.name}: a rule without conda:"
        for lineno, value in directives:
            where = f"{path.relative_to(REPO)}:{lineno}"
            try:
                env_path = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pytest.fail(
                    f"{where}: conda: {value} is not a plain path (cannot check statically)"
                )
            target = (path.parent / env_path).resolve()
            assert target.is_file(), f"{where}: conda env {env_path} does not exist"
            assert "dependencies" in yaml.safe_load(target.read_text()), f"{where}: not an env file"
            seen += 1
    assert seen, "no conda: directive found"
