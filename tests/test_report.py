"""The HTML report: the default run of the tiny DAG ends with results/report.html (built by the
Snakefile's onsuccess with `snakemake --report`), holding every table, figure and run-time
benchmark with its caption, in one category per paper table."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from tiny_dag import local_run, snakemake

pytestmark = pytest.mark.e2e

# At least these; every table, figure and benchmark the run writes must be in the report.
TABLES = [f"results/tables/table1.{ext}" for ext in ("csv", "md", "tex")]
FIGURES = [
    f"results/figures/{stem}.{ext}"
    for stem in ("mtre_distribution", "convergence", "qualitative")
    for ext in ("png", "pdf")
]
BENCHMARKS = [
    "results/benchmarks/prepare/embedded/chest.tsv",
    "results/benchmarks/simulate/embedded/chest.tsv",
    "results/benchmarks/train_regressor/embedded/chest.tsv",
    "results/benchmarks/register/embedded/chest/posenet.tsv",
    "results/benchmarks/register/embedded/chest/ours-so4.tsv",
    "results/benchmarks/figures.tsv",
]


def report_variable(html: str, name: str):
    """A JSON value the report page embeds as ``var NAME = ...`` (its last definition)."""
    start = html.rindex(f"var {name} = ") + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return local_run(tmp_path_factory)


@pytest.fixture(scope="module")
def report(finished):
    path = finished / "results" / "report.html"
    assert path.stat().st_size > 0, "the default run did not build results/report.html"
    html = path.read_text(encoding="utf-8")
    return {
        name: report_variable(html, name) for name in ("results", "categories", "workflow_desc")
    }


def written(finished: Path, folder: str, pattern: str = "*") -> set[str]:
    found = (finished / "results" / folder).glob(pattern)
    return {p.relative_to(finished).as_posix() for p in found if p.is_file()}


def test_every_table_figure_and_benchmark_is_in_the_report(finished, report):
    on_disk = written(finished, "tables") | written(finished, "figures")
    on_disk |= written(finished, "benchmarks", "**/*.tsv")
    assert set(TABLES + FIGURES + BENCHMARKS) <= on_disk
    assert on_disk <= set(report["results"]), "files missing from the report"
    for path in on_disk:
        data = report["results"][path]["data_uri"].split("base64,", 1)[1]
        assert base64.b64decode(data) == (finished / path).read_bytes(), path


def test_categories_follow_the_paper(finished, report):
    categories = {
        name: sorted(p for paths in subcategories.values() for p in paths)
        for name, subcategories in report["categories"].items()
    }
    by_table, figure_tables = {}, []
    for path in written(finished, "tables"):  # results/tables/table1.csv -> Table 1
        numbered = re.fullmatch(r"results/tables/table(\d+)\.\w+", path)
        if numbered:
            by_table.setdefault(f"Table {numbered[1]}", []).append(path)
        else:  # a figure's table (the backbone study, the paper's Figure 4) goes with it
            figure_tables.append(path)
    assert figure_tables and all("backbones" in p for p in figure_tables)
    assert set(categories) == {*by_table, "Figures", "Run time"}
    for name, paths in by_table.items():
        assert categories[name] == sorted(paths)
    assert categories["Figures"] == sorted(written(finished, "figures") | set(figure_tables))
    assert set(report["categories"]["Figures"]) >= {
        "mTRE distribution",
        "Convergence",
        "Qualitative",
    }
    assert categories["Run time"] == sorted(written(finished, "benchmarks", "**/*.tsv"))
    labels = report["results"]["results/benchmarks/register/embedded/chest/ours-so4.tsv"]["labels"]
    assert labels == {
        "rule": "register",
        "dataset": "embedded",
        "subject": "chest",
        "method": "ours-so4",
    }


def test_every_entry_has_its_own_caption_rendered_with_the_run_config(report):
    results = report["results"]
    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        assert "{{" not in entry["caption"], f"{path}: caption template not rendered"
        assert "No caption has been written" not in entry["caption"], (
            f"{path}: write its caption, workflow/report/{Path(path).stem}.rst"
        )
    # Captions quote the config of the run (tiny config: 50 bootstrap resamples, 3 X-rays).
    assert "50 resamples" in results["results/tables/table1.csv"]["caption"]
    assert "mTRE distribution" in results["results/figures/mtre_distribution.png"]["caption"]
    assert "3 test X-rays per subject" in report["workflow_desc"]


def test_report_keeps_reruns_incremental(finished):
    dry = snakemake(finished, "-n")
    assert dry.returncode == 0, dry.stderr[-4000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr
