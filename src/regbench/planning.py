"""What a config asks the workflow to run: subjects, methods, target files, per-job settings.

The rule files hold rules only and ask a :class:`Plan` for everything that depends on the
config, so the decisions are plain Python that pytest reaches. Snakemake evaluates this on every
call, a dry run included: it reads the config alone (never the data) and imports no torch.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from regbench.data import datasets as registry
from regbench.data.sources import RECORD_SUFFIX
from regbench.errors import InputError
from regbench.methods import ABLATION_METHODS, ABLATIONS, IMPLEMENTED, OWN_MODELS
from regbench.models.variants import VARIANTS

# Every file the workflow writes, relative to `results` (`data_root` for download records), with
# Snakemake's wildcards. Rules take their outputs from here and target lists fill it in, so a
# path is written once.
LAYOUT: dict[str, str] = {
    "download_record": "{dataset}/{file}" + RECORD_SUFFIX,  # under data_root
    "ct": "{dataset}/{subject}/prepared/ct.nii.gz",
    "mask": "{dataset}/{subject}/prepared/mask.nii.gz",
    "landmarks": "{dataset}/{subject}/prepared/landmarks.csv",
    "geometry": "{dataset}/{subject}/prepared/geometry.json",
    "xrays": "{dataset}/{subject}/xrays/xrays.pt",
    "xray_index": "{dataset}/{subject}/xrays/index.csv",
    "check_data": "{dataset}/{subject}/checks/check_data.csv",
    "regressor": "{dataset}/{subject}/models/regressor.pt",
    "regressor_log": "{dataset}/{subject}/models/regressor.log.csv",
    "regressor_snapshot": "{dataset}/{subject}/models/regressor.config.json",
    "similarity": "{dataset}/{subject}/models/similarity-{method}.pt",
    "similarity_log": "{dataset}/{subject}/models/similarity-{method}.log.csv",
    "similarity_snapshot": "{dataset}/{subject}/models/similarity-{method}.config.json",
    "method_model": "{dataset}/{subject}/models/{method}.pt",
    "method_model_log": "{dataset}/{subject}/models/{method}.log.csv",
    "method_model_snapshot": "{dataset}/{subject}/models/{method}.config.json",
    "runs": "{dataset}/{subject}/runs/{method}.csv",
    "trajectory": "{dataset}/{subject}/runs/{method}.trajectory.csv",
    "run_snapshot": "{dataset}/{subject}/runs/{method}.config.json",
    "optimizer_study": "{dataset}/{subject}/runs/optimizers.trajectory.csv",
    "backbone_study": "{dataset}/{subject}/runs/backbones.csv",
    "agnostic_regressor": "_agnostic/{dataset}/models/regressor.pt",
    "agnostic_regressor_log": "_agnostic/{dataset}/models/regressor.log.csv",
    "agnostic_regressor_snapshot": "_agnostic/{dataset}/models/regressor.config.json",
    "agnostic_similarity": "_agnostic/{dataset}/models/similarity-{method}.pt",
    "agnostic_similarity_log": "_agnostic/{dataset}/models/similarity-{method}.log.csv",
    "agnostic_similarity_snapshot": "_agnostic/{dataset}/models/similarity-{method}.config.json",
    "agnostic_runs": "_agnostic/{dataset}/{subject}/runs/{method}.csv",
    "agnostic_trajectory": "_agnostic/{dataset}/{subject}/runs/{method}.trajectory.csv",
    "agnostic_run_snapshot": "_agnostic/{dataset}/{subject}/runs/{method}.config.json",
    "table": "tables/{stem}.{ext}",
    "figure": "figures/{stem}.{ext}",
}
PREPARED = ("ct", "mask", "landmarks", "geometry")
TABLE_FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("png", "pdf")
# The paper's Figure 4 (right) compares optimisers on its headline method.
OPTIMIZER_STUDY_METHOD = "ours-so4"
# Sections every job depends on.
BASE_SECTIONS = ("seed", "device", "threads")
# What a registration depends on besides its method's own sections.
REGISTER_SECTIONS = ("prior", "render", "regressor", "geometry", "augment")
# Config sections shared by the refiners of several learned similarities (ProST-m/-t's stage 1)
REFINER_SECTIONS = {"lm": "lm", "prost-m": "prost", "prost-t": "prost"}


def alternatives(names) -> str:
    """A wildcard regex matching exactly ``names`` (none: a regex that matches nothing)."""
    names = list(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def _dump(blob: Mapping) -> str:
    return json.dumps(blob, sort_keys=True)


@dataclass
class Plan:
    """The validated config, and everything the rules derive from it."""

    config: dict
    priors: dict[tuple[str, str], dict] = field(init=False)
    agnostic_priors: dict[str, dict] = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.results: str = c["results"]
        self.data_root: str = c["data_root"]
        # `enabled: false` drops a dataset (e.g. config.yaml's when another file is layered).
        self.datasets = {d: spec for d, spec in c["datasets"].items() if spec["enabled"]}
        # Patient-specific scenario (Table 1): each subject registered with its own models.
        self.subjects = [(d, s) for d, spec in self.datasets.items() for s in spec["subjects"]]
        # Patient-agnostic scenario (Table 2): models trained on a dataset's train_subjects,
        # registered on its held-out test_subjects.
        self.agnostic = {
            d: spec["agnostic"] for d, spec in self.datasets.items() if spec.get("agnostic")
        }
        self.agnostic_subjects = [
            (d, s) for d, a in self.agnostic.items() for s in a["test_subjects"]
        ]
        self.run_methods = [m for m in c["methods"] if m in IMPLEMENTED]
        self._check_datasets()
        self._resolve_priors()
        kinds = {d: registry.get(d) for d in self.datasets}
        self.parsed_datasets = [d for d, k in kinds.items() if k.xrays == "parsed"]
        self.simulated_datasets = [d for d, k in kinds.items() if k.xrays == "simulated"]
        self.downloaded_datasets = [d for d, k in kinds.items() if k.downloaded]
        # Heavy rules request a GPU from the scheduler when the config asks for CUDA.
        self.gpu = 1 if c["device"] == "cuda" else 0
        self.optimizer_study = OPTIMIZER_STUDY_METHOD in self.run_methods and bool(self.subjects)
        # The paper's Figure 4 (left), on the first patient-specific subject.
        self.backbone_subjects = self.subjects[:1] if c["backbone_study"]["enabled"] else []
        # Table 3 (ablations) comes from the patient-agnostic runs when an agnostic scenario
        # lists ablations (the paper's Table 3 is its generalization setting), else from the
        # patient-specific ones.
        listed = self.agnostic_table_methods()
        self.agnostic_ablations = (
            [m for m in listed if m in ABLATION_METHODS] if set(listed) & set(ABLATIONS) else []
        )
        # Tables 1 and 3 and the figures come from the patient-specific runs: a config of the
        # agnostic scenario alone (e.g. workflow/configs/validation-cohort.yaml) has none.
        self.table_stems: list[str] = []
        self.figure_stems: list[str] = []
        if self.subjects:
            self.table_stems = ["table1"] if self.agnostic_ablations else ["table1", "table3"]
            self.figure_stems = ["mtre_distribution", "convergence", "qualitative"]
            if self.optimizer_study:
                self.figure_stems.append("optimizers")

    # ------------------------------------------------------------------ checks and priors

    def _check_datasets(self) -> None:
        """What the schema cannot express: subject ids per dataset, disjoint agnostic splits."""
        if not self.datasets:
            raise InputError("config: every dataset is disabled (datasets.*.enabled: false)")
        for dataset, spec in self.datasets.items():
            agnostic = spec.get("agnostic") or {}
            if not spec["subjects"] and not agnostic:
                raise InputError(
                    f"config: datasets.{dataset} has no subjects and no agnostic block: "
                    "nothing to run"
                )
            both = set(agnostic.get("train_subjects", [])) & set(agnostic.get("test_subjects", []))
            if both:
                raise InputError(
                    f"config: datasets.{dataset}.agnostic: {sorted(both)} are both training and "
                    "test subjects (test subjects must be held out)"
                )
            for subject in self.data_subjects(dataset):
                try:
                    registry.get(dataset).check_subject(subject, spec)
                except InputError as exc:
                    raise InputError(f"config: datasets.{dataset}: {exc}") from None

    def _resolve_priors(self) -> None:
        """Each prepared subject's prior, and one per agnostic scenario (its subjects' priors
        must agree: its models are trained and registered under one prior)."""
        self.priors, self.agnostic_priors = {}, {}
        for dataset in self.datasets:
            for subject in self.data_subjects(dataset):
                try:
                    prior = registry.resolve_prior(self.config, dataset, subject)
                except InputError as exc:
                    raise InputError(f"config: {exc}") from None
                self.priors[(dataset, subject)] = prior
            if dataset in self.agnostic:
                a = self.agnostic[dataset]
                blocks = {
                    _dump(self.priors[(dataset, s)])
                    for s in a["train_subjects"] + a["test_subjects"]
                }
                if len(blocks) > 1:
                    raise InputError(
                        f"config: datasets.{dataset}.agnostic: its subjects have different pose "
                        "priors (views); train and test an agnostic scenario on one view"
                    )
                self.agnostic_priors[dataset] = json.loads(blocks.pop())

    def data_subjects(self, dataset: str) -> list[str]:
        """Every subject of a dataset that is prepared (either scenario), in config order."""
        spec = self.datasets[dataset]
        agnostic = spec.get("agnostic") or {}
        names = [
            *spec["subjects"],
            *agnostic.get("train_subjects", []),
            *agnostic.get("test_subjects", []),
        ]
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------------ paths

    def pattern(self, key: str) -> str:
        """A LAYOUT entry under its root, wildcards left for Snakemake."""
        root = self.data_root if key == "download_record" else self.results
        return f"{root}/{LAYOUT[key]}"

    def path(self, key: str, **values: str) -> str:
        return self.pattern(key).format(**values)

    def subject_dir(self, dataset: str, subject: str) -> str:
        return f"{self.results}/{dataset}/{subject}"

    def prepared_dir(self, dataset: str, subject: str) -> str:
        return f"{self.subject_dir(dataset, subject)}/prepared"

    # ------------------------------------------------------------------ settings

    def settings(self, *sections: str) -> str:
        """JSON of the config sections a job depends on, so that editing them reruns it."""
        return _dump({k: self.config[k] for k in (*BASE_SECTIONS, *sections)})

    def _with_prior(self, prior: dict, sections: tuple[str, ...]) -> dict:
        blob = json.loads(self.settings(*sections))
        if "prior" in blob:
            blob["prior"] = prior
        return blob

    def subject_settings(self, dataset: str, subject: str, *sections: str) -> str:
        """settings(*sections) with `prior` replaced by the subject's own (dataset, then view)."""
        return _dump(self._with_prior(self.priors[(dataset, subject)], sections))

    def agnostic_settings(self, dataset: str, *sections: str) -> str:
        """settings(*sections) with the prior shared by a dataset's agnostic subjects."""
        return _dump(self._with_prior(self.agnostic_priors[dataset], sections))

    def method_sections(self, method: str) -> list[str]:
        """Config sections of a method's own settings (editing one reruns only that method)."""
        sections = []
        if method in VARIANTS:  # the similarity's, and its refiner's shared section if any
            shared = REFINER_SECTIONS.get(VARIANTS[method].refiner)
            sections = ["similarity"] + ([shared] if shared else [])
        return sections + ([method] if method in self.config else [])

    def similarity_train_settings(self, dataset: str, subject: str | None, method: str) -> str:
        """What a learned similarity's training depends on: the renders, the regressor (its
        starts), ``similarity`` and the ``training`` part of the method's own section where it
        has one (SOPI, CDReg; its ``registration`` part reruns registrations only).
        ``subject=None``: the dataset's patient-agnostic scenario."""
        sections = ("prior", "render", "similarity", "geometry", "augment", "regressor")
        if subject is None:
            blob = json.loads(self.agnostic_settings(dataset, *sections))
        else:
            blob = json.loads(self.subject_settings(dataset, subject, *sections))
        if method in VARIANTS and VARIANTS[method].own_section:
            blob[method] = {"training": self.config[method]["training"]}
        return _dump(blob)

    def register_settings(
        self, dataset: str, subject: str, method: str, agnostic: bool = False
    ) -> str:
        """What a registration depends on; an agnostic one uses its models' (shared) prior."""
        sections = (*REGISTER_SECTIONS, *self.method_sections(method))
        if agnostic:
            return self.agnostic_settings(dataset, *sections)
        return self.subject_settings(dataset, subject, *sections)

    def dataset_settings(self, dataset: str, *sections: str) -> str:
        """settings(*sections) plus the dataset's preparation keys (not its subjects or pins);
        a parsed dataset's X-ray height is resolved here (its own, else the geometry's)."""
        blob = json.loads(self.settings(*sections))
        spec = registry.preparation_settings(dataset, self.config["datasets"][dataset])
        if registry.get(dataset).xrays == "parsed":
            spec["height"] = spec.get("height") or self.config["geometry"]["height"]
        blob["datasets"] = {dataset: spec}
        return _dump(blob)

    def simulate_settings(self, dataset: str, subject: str) -> str:
        """Rendering settings, plus the dataset's own number of X-rays when it sets one (the
        `simulate` verb falls back to `simulate.n_xrays`)."""
        blob = json.loads(self.subject_settings(dataset, subject, "prior", "render", "simulate"))
        n_xrays = self.config["datasets"][dataset].get("n_xrays")
        if n_xrays:
            blob["datasets"] = {dataset: {"n_xrays": n_xrays}}
        return _dump(blob)

    def download_settings(self, dataset: str, file: str) -> str:
        """The checksum pins (and dataset revision) of one raw file; editing them re-verifies it."""
        spec = self.config["datasets"][dataset]
        pins = spec.get("sha256")
        pin = pins.get(file) if isinstance(pins, dict) else pins
        download = {"sha256": pin, "archive_sha256": spec.get("archive_sha256")}
        if "revision" in spec:
            download["revision"] = spec["revision"]
        return _dump({"threads": 1, "download": download})

    def table_settings(self) -> str:
        """Tables 1 and 3's settings: the rows, and whether Table 3 is theirs."""
        blob = json.loads(self.settings("methods", "evaluation"))
        blob["ablation_table"] = "table3" in self.table_stems
        return _dump(blob)

    def generalization_settings(self) -> str:
        """Table 2's settings: its rows (the ablations go to Table 3 when they are listed), the
        implemented methods not run without agnostic models, and Table 3's rows, if any."""
        blob = json.loads(self.settings("evaluation"))
        blob["methods"] = [m for m in self.agnostic_table_methods() if m not in ABLATIONS]
        blob["ablations"] = self.agnostic_ablations
        run = {m for d in self.agnostic for m in self.agnostic_methods(d)}
        blob["pending"] = [m for m in blob["methods"] if m in IMPLEMENTED and m not in run]
        return _dump(blob)

    # ------------------------------------------------------------------ job inputs

    def source_path(self, dataset: str, subject: str) -> str:
        spec = self.config["datasets"][dataset]
        return registry.get(dataset).source_path(subject, spec, self.data_root)

    def source_option(self, dataset: str, subject: str) -> str:
        """`--source` of the data verbs for datasets prepared from downloaded files."""
        if dataset not in self.downloaded_datasets:
            return ""
        return f"--source {shlex.quote(self.source_path(dataset, subject))}"

    def raw_inputs(self, dataset: str, subject: str) -> list[str]:
        """What a subject is prepared from: raw files' download records, a custom folder's files."""
        spec = self.config["datasets"][dataset]
        return registry.get(dataset).raw_inputs(subject, spec, self.data_root)

    def data_check(self, dataset: str, subject: str) -> list[str]:
        """The check_data report a parsed subject's training waits for (none when simulated)."""
        if dataset not in self.parsed_datasets:
            return []
        return [self.path("check_data", dataset=dataset, subject=subject)]

    def method_model(self, dataset: str, subject: str, method: str) -> list[str]:
        """The trained model a method registers with: a learned similarity's, a method's own
        (dflnet, scr-reg), or none."""
        if method in VARIANTS:
            return [self.path("similarity", dataset=dataset, subject=subject, method=method)]
        if method in OWN_MODELS:
            return [self.path("method_model", dataset=dataset, subject=subject, method=method)]
        return []

    @staticmethod
    def model_option(method: str, paths: list[str]) -> str:
        """`register`'s option for the model of :meth:`method_model` (none: empty)."""
        if not paths:
            return ""
        flag = "--similarity" if method in VARIANTS else "--model"
        return f"{flag} {shlex.quote(str(paths[0]))}"

    def train_method_settings(self, dataset: str, subject: str, method: str) -> str:
        """What a method's own model depends on: the rendering of its training DRRs and the
        `training` part of its section (its `registration` part reruns registrations only)."""
        blob = json.loads(
            self.subject_settings(dataset, subject, "prior", "render", "geometry", "augment")
        )
        blob[method] = {"training": self.config[method]["training"]}
        return _dump(blob)

    def optimizer_study_similarity(self) -> str:
        """The similarity model the optimiser study compares optimisers on (wildcards left)."""
        return self.pattern("similarity").replace("{method}", OPTIMIZER_STUDY_METHOD)

    def agnostic_similarity_model(self, dataset: str, method: str) -> list[str]:
        if method not in VARIANTS:
            return []
        return [self.path("agnostic_similarity", dataset=dataset, method=method)]

    def agnostic_train_inputs(self, dataset: str) -> list[str]:
        """The prepared files of a dataset's agnostic training subjects."""
        return [
            self.path(key, dataset=dataset, subject=s)
            for s in self.agnostic[dataset]["train_subjects"]
            for key in ("ct", "landmarks", "geometry")
        ]

    def agnostic_train_dirs(self, dataset: str) -> str:
        return " ".join(
            shlex.quote(self.prepared_dir(dataset, s))
            for s in self.agnostic[dataset]["train_subjects"]
        )

    def agnostic_methods(self, dataset: str) -> list[str]:
        """Implemented methods registered in a dataset's agnostic scenario."""
        listed = self.agnostic[dataset]["methods"] or self.config["methods"]
        # Methods with a model of their own have no patient-agnostic training (yet): their
        # Table 2 rows say so (generalization_settings' `pending`).
        return [m for m in listed if m in IMPLEMENTED and m not in OWN_MODELS]

    def agnostic_table_methods(self) -> list[str]:
        """Rows of Table 2: every method configured for an agnostic scenario, in config order."""
        listed = [
            m for a in self.agnostic.values() for m in (a["methods"] or self.config["methods"])
        ]
        return list(dict.fromkeys(listed))

    # ------------------------------------------------------------------ targets

    def run_csvs(self) -> list[str]:
        return [
            self.path("runs", dataset=d, subject=s, method=m)
            for d, s in self.subjects
            for m in self.run_methods
        ]

    def trajectory_csvs(self) -> list[str]:
        return [
            self.path("trajectory", dataset=d, subject=s, method=m)
            for d, s in self.subjects
            for m in self.run_methods
        ]

    def xray_indexes(self) -> list[str]:
        return [self.path("xray_index", dataset=d, subject=s) for d, s in self.subjects]

    def optimizer_studies(self) -> list[str]:
        if not self.optimizer_study:
            return []
        return [self.path("optimizer_study", dataset=d, subject=s) for d, s in self.subjects]

    def backbone_studies(self) -> list[str]:
        return [
            self.path("backbone_study", dataset=d, subject=s) for d, s in self.backbone_subjects
        ]

    def backbone_files(self) -> list[str]:
        """The backbone study's figure and table (none when the study is off)."""
        if not self.backbone_subjects:
            return []
        return [self.path("figure", stem="backbones", ext=e) for e in FIGURE_FORMATS] + [
            self.path("table", stem="backbones", ext=e) for e in TABLE_FORMATS
        ]

    def agnostic_run_csvs(self) -> list[str]:
        return [
            self.path("agnostic_runs", dataset=d, subject=s, method=m)
            for d, s in self.agnostic_subjects
            for m in self.agnostic_methods(d)
        ]

    def table_files(self) -> list[str]:
        return [
            self.path("table", stem=t, ext=ext) for t in self.table_stems for ext in TABLE_FORMATS
        ]

    def figure_files(self) -> list[str]:
        return [
            self.path("figure", stem=f, ext=ext)
            for f in self.figure_stems
            for ext in FIGURE_FORMATS
        ]

    def generalization_files(self) -> list[str]:
        """Table 2, when some dataset has an agnostic scenario (and Table 3, when it lists
        ablations)."""
        if not self.agnostic:
            return []
        stems = ["table2"] + (["table3"] if self.agnostic_ablations else [])
        return [self.path("table", stem=t, ext=ext) for t in stems for ext in TABLE_FORMATS]

    def final_outputs(self) -> list[str]:
        return (
            self.table_files()
            + self.figure_files()
            + self.generalization_files()
            + self.backbone_files()
        )

    # ------------------------------------------------------------------ report

    def names_configured(self, wildcards: Mapping[str, str]) -> bool:
        """Whether a benchmark file's wildcards name a configured dataset, subject and method
        (a results folder keeps an old config's benchmarks; the report shows this config's)."""
        subjects = {d: configured_subjects(spec) for d, spec in self.config["datasets"].items()}
        dataset, subject, method = (wildcards.get(k) for k in ("dataset", "subject", "method"))
        return (
            (dataset is None or dataset in subjects)
            and (subject is None or dataset is None or subject in subjects[dataset])
            and (method is None or method in self.run_methods)
        )


def configured_subjects(spec: Mapping) -> set[str]:
    """Every subject id a dataset's config names (subjects, train_subjects, test_subjects...)."""
    found: set[str] = set()
    for key, value in spec.items() if isinstance(spec, Mapping) else ():
        if key.endswith("subjects") and isinstance(value, list):
            found |= set(map(str, value))
        elif isinstance(value, Mapping):
            found |= configured_subjects(value)
    return found


def table_category(stem: str) -> str:
    """The report category of a table: its table in the paper (table1 -> Table 1)."""
    return re.sub(r"^table(\d+)$", r"Table \1", stem)
