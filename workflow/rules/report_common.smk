# Helpers of report.smk (kept apart: snakemake --lint wants functions and rules in separate
# files): report() flags with RST captions from workflow/report/, the run-time benchmarks, and
# build_report() (the Snakefile's onsuccess).
import json
import os
import subprocess
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from regbench.planning import table_category

REPORT_HTML = f"{R}/report.html"
# Absolute, so that report() resolves them wherever it is called (rule all lives in the Snakefile).
CAPTIONS = os.path.join(workflow.basedir, "workflow", "report")
FIGURE_TITLES = {
    "mtre_distribution": "mTRE distribution",
    "convergence": "Convergence",
    "qualitative": "Qualitative",
    "optimizers": "Optimizers",
}
# Stands in for a missing workflow/report/{name}.rst (tests/test_report.py fails on it).
UNCAPTIONED = "uncaptioned"


def flag_report(path, caption, category, subcategory, labels):
    """report() with the caption workflow/report/{caption}.rst."""
    rst = os.path.join(CAPTIONS, f"{caption}.rst")
    if not os.path.exists(rst):
        rst = os.path.join(CAPTIONS, f"{UNCAPTIONED}.rst")
    return report(path, caption=rst, category=category, subcategory=subcategory, labels=labels)


def _stem_ext(path):
    stem, ext = os.path.splitext(os.path.basename(path))
    return stem, ext.lstrip(".")


def report_tables(paths):
    """Table files, each flagged for the report under its paper table's category."""
    flagged = []
    for path in paths:
        stem, ext = _stem_ext(path)
        category = table_category(stem)
        labels = {"table": category, "format": ext}
        flagged.append(flag_report(path, stem, category, category, labels))
    return flagged


def report_figures():
    """PLAN's figures, each flagged for the report (category Figures, one subcategory each)."""
    flagged = []
    for path in PLAN.figure_files():
        stem, ext = _stem_ext(path)
        title = FIGURE_TITLES.get(stem, stem)
        labels = {"figure": title, "format": ext}
        flagged.append(flag_report(path, stem, "Figures", title, labels))
    return flagged


def report_backbones():
    """The backbone study's figure and table, flagged under Figures (the paper's Figure 4)."""
    flagged = []
    for path in PLAN.backbone_files():
        _, ext = _stem_ext(path)
        labels = {"figure": "Backbones", "format": ext}
        flagged.append(flag_report(path, "backbones", "Figures", "Backbones", labels))
    return flagged


def building_report():
    """Whether this process renders the report (`snakemake --report`, as build_report runs)."""
    return any(
        arg in ("--report", "--reporter") or arg.startswith(("--report=", "--reporter="))
        for arg in sys.argv[1:]
    )


def benchmark_files():
    """(path, rule, wildcards) of this config's benchmark files on disk, globbed from the
    benchmark pattern of every rule that has one."""
    files = []
    for item in workflow.rules:
        if item.benchmark is None:
            continue
        pattern = str(getattr(rules, item.name).benchmark)
        found = glob_wildcards(pattern)
        if not found._fields:
            if os.path.exists(pattern):
                files.append((pattern, item.name, {}))
            continue
        for values in zip(*found):
            wildcards = dict(zip(found._fields, values))
            if PLAN.names_configured(wildcards):
                files.append((pattern.format(**wildcards), item.name, wildcards))
    return sorted(files, key=lambda f: f[0])


def report_benchmarks():
    """The run-time benchmarks (one tsv per job), flagged for the report (category Run time).

    report() flags outputs and inputs, not benchmark files, so rule all takes them as flagged
    inputs, in a report process only: there they exist (the run wrote them), whereas a run
    must not be made to re-create an old config's leftover benchmark.
    """
    if not building_report():
        return []
    flagged = []
    for path, name, wildcards in benchmark_files():
        labels = {"rule": name} | {k: wildcards.get(k, "-") for k in ("dataset", "subject", "method")}
        flagged.append(flag_report(path, "benchmark", "Run time", name, labels))
    return flagged


def build_report():
    """Render REPORT_HTML with `snakemake --report` (the Snakefile's onsuccess).

    A separate process, because the report is Snakemake's own command; it gets this run's
    Snakefile, working directory and effective config (dumped to .snakemake/), so overrides
    given with --config/--configfile are reported as run. Skipped when the run did not finish
    the whole default DAG (e.g. a single target was requested).
    """
    missing = [str(f) for f in rules.all.input if not os.path.exists(f)]
    if missing:
        logger.info(
            f"Report not built ({len(missing)} outputs of the default target missing); "
            f"run the whole workflow, then `snakemake --report {REPORT_HTML}`."
        )
        return
    os.makedirs(".snakemake", exist_ok=True)
    effective = os.path.abspath(os.path.join(".snakemake", "regbench-report-config.json"))
    with open(effective, "w") as fh:
        json.dump(config, fh, indent=1, sort_keys=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(workflow.main_snakefile),
        "--directory",
        os.getcwd(),
        "--configfile",
        effective,
        "--report",
        REPORT_HTML,
    ]
    logger.info(f"Building the report: snakemake --report {REPORT_HTML}")
    if subprocess.run(cmd).returncode != 0:
        raise WorkflowError(
            f"Building {REPORT_HTML} failed (see above); the results are complete, "
            f"retry with `snakemake --report {REPORT_HTML}`."
        )
