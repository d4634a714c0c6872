# Validation, input functions and wildcard constraints; no rules here.
import json
import os
import sys

from snakemake.utils import validate

# Jobs run regbench from this checkout, whatever is installed (also inside conda envs).
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
)

from regbench.methods import IMPLEMENTED


validate(config, schema="../schemas/config.schema.yaml")

R = config["results"]
SUBJECTS = [
    (dataset, subject)
    for dataset, spec in config["datasets"].items()
    for subject in spec["subjects"]
]
RUN_METHODS = [m for m in config["methods"] if m in IMPLEMENTED]


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    subject=r"[A-Za-z0-9_.-]+",
    method="|".join(IMPLEMENTED) if IMPLEMENTED else "none",


def settings(*sections):
    """JSON of the config sections a job depends on, so that editing them reruns it."""
    keys = ("seed", "device", "threads", *sections)
    return json.dumps({k: config[k] for k in keys}, sort_keys=True)


def method_sections(method):
    """Config sections of a method's own settings (so editing one reruns only that method)."""
    return [method] if method in config else []


def subject_dir(dataset, subject):
    return f"{R}/{dataset}/{subject}"


def run_csvs():
    return [
        f"{subject_dir(d, s)}/runs/{m}.csv" for d, s in SUBJECTS for m in RUN_METHODS
    ]


def trajectory_csvs():
    return [
        f"{subject_dir(d, s)}/runs/{m}.trajectory.csv" for d, s in SUBJECTS for m in RUN_METHODS
    ]


TABLE_STEMS = ["table1"]
FIGURE_STEMS = ["mtre_distribution", "convergence", "qualitative"]


def table_files():
    return [f"{R}/tables/{t}.{ext}" for t in TABLE_STEMS for ext in ("csv", "md", "tex")]


def figure_files():
    return [f"{R}/figures/{f}.{ext}" for f in FIGURE_STEMS for ext in ("png", "pdf")]


def final_outputs():
    return table_files() + figure_files()
