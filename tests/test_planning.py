"""The workflow's plan (regbench.planning): targets, settings and paths from a config alone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from configs import paper_config
from conftest import REPO

from regbench.config import load_config
from regbench.errors import InputError
from regbench.methods import IMPLEMENTED
from regbench.planning import LAYOUT, Plan, alternatives, configured_subjects, table_category


@pytest.fixture(scope="module")
def default_config() -> dict:
    return load_config(REPO / "config.yaml")


def plan_with(config: dict, **changes) -> Plan:
    cfg = copy.deepcopy(config)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value
    return Plan(cfg)


def test_default_plan_targets(default_config):
    plan = Plan(default_config)
    assert plan.subjects == [("embedded", "chest")]
    assert plan.agnostic_subjects == [("embedded-cohort", "c04"), ("embedded-cohort", "c05")]
    assert plan.run_methods == default_config["methods"]  # every listed method is implemented
    assert "psss-reg" in plan.run_methods  # a method with a model of its own
    assert plan.run_csvs()[0] == f"{plan.results}/embedded/chest/runs/{plan.run_methods[0]}.csv"
    outputs = plan.final_outputs()
    assert f"{plan.results}/tables/table1.md" in outputs
    assert f"{plan.results}/tables/table2.tex" in outputs  # the cohort's agnostic scenario
    assert f"{plan.results}/figures/optimizers.pdf" in outputs  # ours-so4 runs
    assert len(outputs) == len(set(outputs))
    assert plan.agnostic_run_csvs()[0].startswith(f"{plan.results}/_agnostic/embedded-cohort/c04/")


def test_listed_but_unimplemented_methods_get_table_rows_not_jobs(default_config, monkeypatch):
    # Every method of the tables is implemented: a listed one without a class is simulated.
    monkeypatch.setattr("regbench.planning.IMPLEMENTED", IMPLEMENTED - {"dflnet"})
    plan = Plan(default_config)
    assert "dflnet" in default_config["methods"] and "dflnet" not in plan.run_methods
    assert not plan.names_configured({"dataset": "embedded", "method": "dflnet"})
    assert not any(path.endswith("/dflnet.csv") for path in plan.run_csvs())


def test_no_optimizer_study_without_ours_so4(default_config):
    plan = plan_with(default_config, methods=["posenet", "diffpose"])
    assert plan.optimizer_studies() == []
    assert not any("optimizers" in f for f in plan.figure_files())


def test_paths_fill_the_patterns_rules_use(default_config):
    plan = Plan(default_config)
    assert plan.pattern("runs") == f"{plan.results}/{{dataset}}/{{subject}}/runs/{{method}}.csv"
    assert (
        plan.path("runs", dataset="d", subject="s", method="m") == f"{plan.results}/d/s/runs/m.csv"
    )
    assert plan.pattern("download_record").startswith(plan.data_root + "/")
    assert plan.optimizer_study_similarity().endswith("/models/similarity-ours-so4.pt")
    assert len(set(LAYOUT.values())) == len(LAYOUT)  # one producer per path


def test_registration_keys_plan_no_training(default_config):
    """Editing the LM (a registration setting) changes the registrations' settings only."""
    before, after = Plan(default_config), plan_with(default_config, lm__iterations=7)
    train = ("prior", "render", "similarity", "geometry", "augment", "regressor")
    assert before.subject_settings("embedded", "chest", *train) == after.subject_settings(
        "embedded", "chest", *train
    )
    for method in ("ours-so4", "abl-euclidean"):
        assert before.register_settings("embedded", "chest", method) != after.register_settings(
            "embedded", "chest", method
        )
    assert before.register_settings("embedded", "chest", "diffpose") == after.register_settings(
        "embedded", "chest", "diffpose"
    )


def test_method_sections(default_config):
    plan = Plan(default_config)
    assert plan.method_sections("ours-so4") == ["similarity", "lm"]
    assert plan.method_sections("diffpose") == ["diffpose"]
    assert plan.method_sections("posenet") == []
    blob = json.loads(plan.register_settings("embedded", "chest", "bobyqa"))
    assert "bobyqa" in blob and "diffpose" not in blob and "similarity" not in blob


def test_agnostic_settings_use_the_shared_prior(default_config):
    plan = Plan(default_config)
    blob = json.loads(plan.register_settings("embedded-cohort", "c04", "ours-so4", agnostic=True))
    assert blob["prior"] == plan.agnostic_priors["embedded-cohort"]
    assert "similarity" in blob and "lm" in blob


def test_dataset_checks_name_the_key(default_config):
    with pytest.raises(InputError, match="both training and test"):
        Plan(_overlap(default_config))
    with pytest.raises(InputError, match="datasets.embedded"):
        plan_with(default_config, datasets__embedded__subjects=["lung"])
    cfg = copy.deepcopy(default_config)
    for spec in cfg["datasets"].values():
        spec["enabled"] = False
    with pytest.raises(InputError, match="every dataset is disabled"):
        Plan(cfg)


def _overlap(config: dict) -> dict:
    cfg = copy.deepcopy(config)
    cfg["datasets"]["embedded-cohort"]["agnostic"]["test_subjects"] = ["c03", "c04"]
    return cfg


def test_paper_plan_views_checks_and_downloads():
    plan = Plan(paper_config())
    lat = [s for d, s in plan.subjects if d == "ljubljana" and s.endswith("-lat")][0]
    ap = lat.replace("-lat", "-ap")
    assert plan.priors[("ljubljana", lat)] != plan.priors[("ljubljana", ap)]
    assert "deepfluoro" in plan.parsed_datasets and "deepfluoro" in plan.downloaded_datasets
    specimen = next(s for d, s in plan.subjects if d == "deepfluoro")
    assert plan.data_check("deepfluoro", specimen) == [
        f"{plan.results}/deepfluoro/{specimen}/checks/check_data.csv"
    ]
    records = plan.raw_inputs("deepfluoro", specimen)
    assert records and all(r.startswith(plan.data_root) and r.endswith(".sha256") for r in records)
    assert plan.source_option("deepfluoro", specimen).startswith("--source ")
    height = json.loads(plan.dataset_settings("deepfluoro"))["datasets"]["deepfluoro"]["height"]
    assert height == (
        plan.config["datasets"]["deepfluoro"].get("height") or plan.config["geometry"]["height"]
    )


def test_simulated_subjects_have_no_data_check(default_config):
    plan = Plan(default_config)
    assert plan.data_check("embedded", "chest") == []
    assert plan.source_option("embedded", "chest") == ""
    assert plan.raw_inputs("embedded", "chest") == []


def test_report_helpers(default_config):
    plan = Plan(default_config)
    assert table_category("table2") == "Table 2" and table_category("notes") == "notes"
    assert configured_subjects({"subjects": ["a"], "agnostic": {"test_subjects": ["b"]}}) == {
        "a",
        "b",
    }
    assert plan.names_configured({"dataset": "embedded", "subject": "chest", "method": "diffpose"})
    assert not plan.names_configured(
        {"dataset": "embedded", "subject": "old", "method": "diffpose"}
    )
    assert not plan.names_configured({"dataset": "embedded", "method": "magic"})
    assert alternatives([]) == "(?!)" and alternatives(["a.b"]) == r"a\.b"


def test_planning_imports_no_torch():
    """Snakemake plans on every call, a dry run included: torch would cost it seconds."""
    code = (
        "import sys; from configs import layered_config, paper_config; "
        "from regbench.planning import Plan; Plan(layered_config()); Plan(paper_config()); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO / "tests"
    )
    assert out.stdout.strip() == "False"


def test_backbone_study_targets(default_config):
    plan = Plan(default_config)
    assert plan.backbone_studies() == [f"{plan.results}/embedded/chest/runs/backbones.csv"]
    assert f"{plan.results}/figures/backbones.png" in plan.final_outputs()
    assert f"{plan.results}/tables/backbones.md" in plan.final_outputs()
    off = copy.deepcopy(default_config)
    off["backbone_study"]["enabled"] = False
    plan = Plan(off)
    assert plan.backbone_studies() == [] and not any("backbones" in f for f in plan.final_outputs())
