# The plan of this config (regbench.planning): validation, targets, settings and paths. Rule files
# hold rules and ask PLAN; the few wrappers here turn Snakemake's wildcards into its arguments.
import os
import sys

from snakemake.exceptions import WorkflowError

# Jobs run regbench from this checkout, whatever is installed (also inside conda envs).
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
)

from regbench.config import validate_config
from regbench.errors import InputError
from regbench.methods import IMPLEMENTED, OWN_MODELS
from regbench.planning import Plan, alternatives
from regbench.data.datasets import SUBJECT_PATTERN


try:
    # Fills every default; a config validated before is read back from .snakemake/regbench/.
    validate_config(config, "config", cache_dir=os.path.join(".snakemake", "regbench"))
    PLAN = Plan(config)
except InputError as exc:
    raise WorkflowError(str(exc)) from None

R = PLAN.results


wildcard_constraints:
    dataset=alternatives(PLAN.datasets),
    subject=SUBJECT_PATTERN,
    method=alternatives(sorted(IMPLEMENTED)),


def raw_inputs(w):
    return PLAN.raw_inputs(w.dataset, w.subject)


def data_check(w):
    return PLAN.data_check(w.dataset, w.subject)


def source_option(w):
    return PLAN.source_option(w.dataset, w.subject)


def subject_settings(*sections):
    """A params function: the subject's settings of ``sections``."""
    return lambda w: PLAN.subject_settings(w.dataset, w.subject, *sections)


def agnostic_settings(*sections):
    """A params function: the agnostic scenario's settings of ``sections``."""
    return lambda w: PLAN.agnostic_settings(w.dataset, *sections)


def register_settings(w):
    return PLAN.register_settings(w.dataset, w.subject, w.method)


def method_model(w):
    return PLAN.method_model(w.dataset, w.subject, w.method)


def agnostic_similarity_model(w):
    return PLAN.agnostic_similarity_model(w.dataset, w.method)


def agnostic_train_inputs(w):
    return PLAN.agnostic_train_inputs(w.dataset)


def agnostic_train_dirs(w):
    return PLAN.agnostic_train_dirs(w.dataset)
