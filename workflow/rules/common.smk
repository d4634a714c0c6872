# Validation, input functions and wildcard constraints; no rules here.
import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

# Jobs run regbench from this checkout, whatever is installed (also inside conda envs).
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
)

from regbench.methods import IMPLEMENTED
from regbench.models.variants import VARIANTS
from regbench.data import datasets as registry
from regbench.errors import InputError
from snakemake.exceptions import WorkflowError


validate(config, schema="../schemas/config.schema.yaml")

R = config["results"]
DATA = config["data_root"]
# Enabled datasets (`enabled: false` drops one, e.g. config.yaml's when another file is layered).
DATASETS = {d: spec for d, spec in config["datasets"].items() if spec["enabled"]}
# Patient-specific scenario (Table 1): each subject registered with its own models.
SUBJECTS = [(dataset, subject) for dataset, spec in DATASETS.items() for subject in spec["subjects"]]
# Patient-agnostic scenario (Table 2): per dataset, models trained on train_subjects, registered
# on the held-out test_subjects; outputs under {R}/_agnostic/{dataset}/.
AGNOSTIC = {d: spec["agnostic"] for d, spec in DATASETS.items() if spec.get("agnostic")}
AGNOSTIC_SUBJECTS = [(d, s) for d, a in AGNOSTIC.items() for s in a["test_subjects"]]
RUN_METHODS = [m for m in config["methods"] if m in IMPLEMENTED]


def check_datasets():
    """Checks the schema cannot express: subject ids per dataset, disjoint agnostic splits."""
    if not DATASETS:
        raise WorkflowError("config: every dataset is disabled (datasets.*.enabled: false)")
    for dataset, spec in DATASETS.items():
        agnostic = spec.get("agnostic") or {}
        if not spec["subjects"] and not agnostic:
            raise WorkflowError(
                f"config: datasets.{dataset} has no subjects and no agnostic block: nothing to run"
            )
        both = set(agnostic.get("train_subjects", [])) & set(agnostic.get("test_subjects", []))
        if both:
            raise WorkflowError(
                f"config: datasets.{dataset}.agnostic: {sorted(both)} are both training and "
                "test subjects (test subjects must be held out)"
            )
        for subject in data_subjects(dataset):
            try:
                registry.get(dataset).check_subject(subject, spec)
            except InputError as exc:
                raise WorkflowError(f"config: datasets.{dataset}: {exc}") from None


def data_subjects(dataset):
    """Every subject of a dataset that is prepared (either scenario), in config order."""
    spec = DATASETS[dataset]
    agnostic = spec.get("agnostic") or {}
    names = [*spec["subjects"], *agnostic.get("train_subjects", []), *agnostic.get("test_subjects", [])]
    return list(dict.fromkeys(names))


def alternatives(names):
    """A wildcard regex matching exactly ``names`` (none: a regex that matches nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


check_datasets()


def resolve_priors():
    """Each prepared subject's prior block, and one per agnostic scenario (all its subjects'
    priors must agree: its models are trained and registered under one prior)."""
    priors, shared = {}, {}
    for dataset in DATASETS:
        for subject in data_subjects(dataset):
            try:
                priors[(dataset, subject)] = registry.resolve_prior(config, dataset, subject)
            except InputError as exc:
                raise WorkflowError(f"config: {exc}") from None
        if dataset in AGNOSTIC:
            a = AGNOSTIC[dataset]
            blocks = {json.dumps(priors[(dataset, s)], sort_keys=True) for s in a["train_subjects"] + a["test_subjects"]}
            if len(blocks) > 1:
                raise WorkflowError(
                    f"config: datasets.{dataset}.agnostic: its subjects have different pose "
                    "priors (views); train and test an agnostic scenario on one view"
                )
            shared[dataset] = json.loads(blocks.pop())
    return priors, shared


PRIORS, AGNOSTIC_PRIORS = resolve_priors()
PARSED_DATASETS = [d for d in DATASETS if registry.get(d).xrays == "parsed"]
SIMULATED_DATASETS = [d for d in DATASETS if registry.get(d).xrays == "simulated"]
DOWNLOADED_DATASETS = [d for d in DATASETS if registry.get(d).downloaded]
# Heavy rules request a GPU from the scheduler (resources: gpu=GPU) when the config asks for CUDA.
GPU = 1 if config["device"] == "cuda" else 0


wildcard_constraints:
    dataset=alternatives(DATASETS),
    subject=registry.SUBJECT_PATTERN,
    method="|".join(sorted(IMPLEMENTED)),


def settings(*sections):
    """JSON of the config sections a job depends on, so that editing them reruns it."""
    keys = ("seed", "device", "threads", *sections)
    return json.dumps({k: config[k] for k in keys}, sort_keys=True)


def subject_settings(dataset, subject, *sections):
    """settings(*sections) with `prior` replaced by the subject's own (dataset, then view)."""
    blob = json.loads(settings(*sections))
    if "prior" in blob:
        blob["prior"] = PRIORS[(dataset, subject)]
    return json.dumps(blob, sort_keys=True)


def agnostic_settings(dataset, *sections):
    """settings(*sections) with the prior shared by a dataset's agnostic subjects."""
    blob = json.loads(settings(*sections))
    if "prior" in blob:
        blob["prior"] = AGNOSTIC_PRIORS[dataset]
    return json.dumps(blob, sort_keys=True)


def register_settings(wildcards, agnostic=False):
    """What a registration depends on; an agnostic one uses its models' (shared) prior."""
    sections = (
        "prior", "render", "regressor", "geometry", "augment", *method_sections(wildcards.method)
    )
    if agnostic:
        return agnostic_settings(wildcards.dataset, *sections)
    return subject_settings(wildcards.dataset, wildcards.subject, *sections)


def method_sections(method):
    """Config sections of a method's own settings (so editing one reruns only that method)."""
    sections = ["similarity", "lm"] if method in VARIANTS else []
    return sections + ([method] if method in config else [])


def similarity_model(wildcards):
    """The trained similarity model a learned-similarity method registers with (else none)."""
    if wildcards.method not in VARIANTS:
        return []
    return f"{subject_dir(wildcards.dataset, wildcards.subject)}/models/similarity-{wildcards.method}.pt"


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


TABLE_STEMS = ["table1", "table3"]
# LM vs Adam vs gradient descent on ours-so4 (paper's Figure 4, right), when ours-so4 runs.
OPTIMIZER_STUDY = "ours-so4" in RUN_METHODS
FIGURE_STEMS = ["mtre_distribution", "convergence", "qualitative"] + (
    ["optimizers"] if OPTIMIZER_STUDY else []
)


def optimizer_studies():
    if not OPTIMIZER_STUDY:
        return []
    return [f"{subject_dir(d, s)}/runs/optimizers.trajectory.csv" for d, s in SUBJECTS]


def table_files():
    return [f"{R}/tables/{t}.{ext}" for t in TABLE_STEMS for ext in ("csv", "md", "tex")]


def figure_files():
    return [f"{R}/figures/{f}.{ext}" for f in FIGURE_STEMS for ext in ("png", "pdf")]


def final_outputs():
    return table_files() + figure_files() + generalization_files()


# ---------------------------------------------------------------- data (download, parse, prepare)


def dataset_settings(dataset, *sections):
    """settings(*sections) plus the dataset's preparation keys (not its subject lists or pins)."""
    blob = json.loads(settings(*sections))
    spec = registry.preparation_settings(dataset, config["datasets"][dataset])
    if registry.get(dataset).xrays == "parsed":  # the X-ray rows after downsampling
        spec["height"] = spec.get("height") or config["geometry"]["height"]
    blob["datasets"] = {dataset: spec}
    return json.dumps(blob, sort_keys=True)


def source_path(dataset, subject):
    return registry.get(dataset).source_path(subject, config["datasets"][dataset], DATA)


def download_settings(dataset, file):
    """The checksum pins (and dataset revision) of one raw file; editing them re-verifies it."""
    spec = config["datasets"][dataset]
    pins = spec.get("sha256")
    pin = pins.get(file) if isinstance(pins, dict) else pins
    download = {"sha256": pin, "archive_sha256": spec.get("archive_sha256")}
    if "revision" in spec:
        download["revision"] = spec["revision"]
    return json.dumps({"threads": 1, "download": download}, sort_keys=True)


def raw_inputs(wildcards):
    """What a subject is prepared from: raw files' download records, a custom folder's files."""
    d, s = wildcards.dataset, wildcards.subject
    return registry.get(d).raw_inputs(s, config["datasets"][d], DATA)


def data_check(wildcards):
    """The check_data report a parsed subject's training waits for (none when simulated)."""
    if wildcards.dataset not in PARSED_DATASETS:
        return []
    return f"{subject_dir(wildcards.dataset, wildcards.subject)}/checks/check_data.csv"


def source_option(wildcards):
    """`--source` of `regbench prepare` for datasets prepared from downloaded files."""
    d = wildcards.dataset
    return f"--source {shlex.quote(source_path(d, wildcards.subject))}" if d in DOWNLOADED_DATASETS else ""


def simulate_settings(wildcards):
    """Rendering settings, plus the dataset's own number of X-rays when it sets one."""
    blob = json.loads(subject_settings(wildcards.dataset, wildcards.subject, "prior", "render", "simulate"))
    n_xrays = config["datasets"][wildcards.dataset].get("n_xrays")
    if n_xrays:
        blob["datasets"] = {wildcards.dataset: {"n_xrays": n_xrays}}
    return json.dumps(blob, sort_keys=True)


# ---------------------------------------------------------------- patient-agnostic scenario


def agnostic_dir(dataset):
    return f"{R}/_agnostic/{dataset}"


def agnostic_methods(dataset):
    """Implemented methods registered in a dataset's agnostic scenario."""
    listed = AGNOSTIC[dataset]["methods"] or config["methods"]
    return [m for m in listed if m in IMPLEMENTED]


def agnostic_table_methods():
    """Rows of Table 2: every method configured for an agnostic scenario, in config order."""
    listed = [m for a in AGNOSTIC.values() for m in (a["methods"] or config["methods"])]
    return list(dict.fromkeys(listed))


def agnostic_train_inputs(wildcards):
    """The prepared training subjects of a dataset's agnostic model."""
    return [
        f"{subject_dir(wildcards.dataset, s)}/prepared/{name}"
        for s in AGNOSTIC[wildcards.dataset]["train_subjects"]
        for name in ("ct.nii.gz", "landmarks.csv", "geometry.json")
    ]


def agnostic_train_dirs(wildcards):
    return " ".join(
        shlex.quote(f"{subject_dir(wildcards.dataset, s)}/prepared")
        for s in AGNOSTIC[wildcards.dataset]["train_subjects"]
    )


def agnostic_similarity_model(wildcards):
    """The agnostic similarity model of a learned-similarity method (none for the others)."""
    if wildcards.method not in VARIANTS:
        return []
    return f"{agnostic_dir(wildcards.dataset)}/models/similarity-{wildcards.method}.pt"


def agnostic_run_csvs():
    return [
        f"{agnostic_dir(d)}/{s}/runs/{m}.csv" for d, s in AGNOSTIC_SUBJECTS for m in agnostic_methods(d)
    ]


def generalization_settings():
    """Table 2's settings: its rows, and the implemented methods not run without agnostic models."""
    blob = json.loads(settings("evaluation"))
    blob["methods"] = agnostic_table_methods()
    run = {m for d in AGNOSTIC for m in agnostic_methods(d)}
    blob["pending"] = [m for m in blob["methods"] if m in IMPLEMENTED and m not in run]
    return json.dumps(blob, sort_keys=True)


def generalization_files():
    """Table 2, when some dataset has an agnostic scenario."""
    return [f"{R}/tables/table2.{ext}" for ext in ("csv", "md", "tex")] if AGNOSTIC else []


def report_generalization_tables():
    """generalization_files(), flagged for the report like report_tables() (report_common.smk)."""
    flagged = []
    for path in generalization_files():
        labels = {"table": "Table 2", "format": os.path.splitext(path)[1].lstrip(".")}
        flagged.append(flag_report(path, "table2", "Table 2", None, labels))
    return flagged
