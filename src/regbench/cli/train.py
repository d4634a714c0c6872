"""Training stages: the pose regressor and the learned similarities, each either on one subject
or patient-agnostic (``-agnostic``: one model pooled over several subjects' ``--prepared``).

Both flavours of a model share one handler; only the seed key and what is passed as the
training data differ, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from regbench.cli.common import (
    Handler,
    Opening,
    Subparsers,
    add_stage,
    open_stage,
    pooled_subjects,
)
from regbench.errors import InputError

if TYPE_CHECKING:
    from regbench.data.subject import Prepared

LOG_CSV_HELP = "training log (step, loss, seconds)"


def _pooled(args: argparse.Namespace) -> bool:
    return args.subject is None


def _open(args: argparse.Namespace, *seed_tags: str) -> tuple[Opening, Prepared | list[str]]:
    """The opening and the training data: the prepared subject, or the pooled folders (which
    the patient-agnostic trainers read themselves)."""
    pooled = _pooled(args)
    stage = open_stage(args, *seed_tags, device=True, prepared=not pooled)
    return stage, args.prepared if pooled else stage.prepared


def cmd_train_regressor(args: argparse.Namespace) -> None:
    from regbench.train.agnostic import train_regressor_agnostic
    from regbench.train.regressor import train_regressor

    stage, data = _open(args, "regressor")
    train = train_regressor
    if _pooled(args):
        subjects = pooled_subjects(args.prepared)
        logging.info("patient-agnostic regressor of %s on %s", args.dataset, ", ".join(subjects))
        train = train_regressor_agnostic
    train(data, stage.settings, stage.seed, Path(args.out), Path(args.log_csv), stage.device)


def cmd_train_similarity(args: argparse.Namespace) -> None:
    from regbench.models.variants import VARIANTS, training_seed_tag
    from regbench.train.agnostic import train_similarity_agnostic
    from regbench.train.regressor import load_regressor
    from regbench.train.similarity import train_similarity

    if args.variant not in VARIANTS:
        raise InputError(f"unknown similarity variant '{args.variant}' (known: {sorted(VARIANTS)})")
    stage, data = _open(args, "similarity", training_seed_tag(args.variant))
    train = train_similarity
    if _pooled(args):
        subjects = pooled_subjects(args.prepared)
        logging.info(
            "patient-agnostic %s of %s on %s", args.variant, args.dataset, ", ".join(subjects)
        )
        train = train_similarity_agnostic
    train(
        data,
        args.variant,
        stage.settings,
        stage.seed,
        Path(args.out),
        Path(args.log_csv),
        stage.device,
        load_regressor(args.regressor, stage.settings, stage.device),
    )


def cmd_train_method(args: argparse.Namespace) -> None:
    from regbench.methods import OWN_MODELS, check_method, method_class, needs_own_model

    check_method(args.method)
    if not needs_own_model(args.method):
        raise InputError(
            f"method '{args.method}' learns no model of its own (train-method trains "
            f"{', '.join(sorted(OWN_MODELS)) or 'none yet'})"
        )
    stage = open_stage(args, "method", args.method, device=True, prepared=True)
    method_class(args.method).train(
        stage.prepared, stage.settings, stage.seed, Path(args.out), Path(args.log_csv), stage.device
    )


def cmd_backbone_study(args: argparse.Namespace) -> None:
    from regbench.data.xrays import read_xrays
    from regbench.io import write_csv
    from regbench.train.backbone_study import study_backbones

    stage = open_stage(args, "backbone-study", device=True, prepared=True)
    xrays = read_xrays(args.xrays, stage.prepared.geometry)
    study = study_backbones(stage.prepared, xrays, stage.settings, stage.seed, stage.device)
    study.insert(0, "subject", args.subject)
    study.insert(0, "dataset", args.dataset)
    write_csv(study, args.out)
    logging.info("backbone study of %s/%s: %d backbones", args.dataset, args.subject, len(study))


def _add_training(
    sub: Subparsers, name: str, func: Handler, help_: str, io: str, pooled: bool, variant: bool
) -> argparse.ArgumentParser:
    """``--dataset``, ``--subject`` (one subject) or none (pooled), ``--variant``, ``--prepared``
    (one folder, or several when pooled), in the order the verbs have always listed them."""
    p = add_stage(sub, name, func, help_, io)
    p.add_argument("--dataset", required=True)
    if pooled:
        p.set_defaults(subject=None)
    else:
        p.add_argument("--subject", required=True)
    if variant:
        p.add_argument("--variant", required=True)
    if pooled:
        p.add_argument("--prepared", nargs="+", required=True, help="prepared/ folders")
    else:
        p.add_argument("--prepared", required=True)
    return p


def add_parsers(sub: Subparsers) -> None:
    for pooled, name, help_, io in (
        (
            False,
            "train-regressor",
            "train the pose regressor",
            "Reads: --prepared. Writes: --out (regressor.pt), --log-csv and a .config.json "
            "snapshot; resumes from --out's .partial state.",
        ),
        (
            True,
            "train-regressor-agnostic",
            "train one pose regressor on several subjects (patient-agnostic)",
            "Reads: every --prepared folder. Writes: --out (regressor.pt), --log-csv, a "
            ".config.json snapshot beside --out; resumes from --out's .partial state.",
        ),
    ):
        p = _add_training(sub, name, cmd_train_regressor, help_, io, pooled, variant=False)
        p.add_argument("--out", required=True, help="regressor.pt")
        p.add_argument("--log-csv", required=True, help=LOG_CSV_HELP)

    for pooled, name, help_, io, regressor_help in (
        (
            False,
            "train-similarity",
            "train a learned similarity variant",
            "Reads: --prepared and --regressor (its estimates are the training starts). Writes: "
            "--out (similarity-{variant}.pt), --log-csv, a .config.json snapshot.",
            "the subject's regressor.pt (starts)",
        ),
        (
            True,
            "train-similarity-agnostic",
            "train one learned similarity variant on several subjects (patient-agnostic)",
            "Reads: every --prepared folder and --regressor. Writes: --out "
            "(similarity-{variant}.pt), --log-csv, a .config.json snapshot; resumes from "
            ".partial.",
            "the agnostic regressor.pt (starts)",
        ),
    ):
        p = _add_training(sub, name, cmd_train_similarity, help_, io, pooled, variant=True)
        p.add_argument("--regressor", required=True, help=regressor_help)
        p.add_argument("--out", required=True, help="similarity-{variant}.pt")
        p.add_argument("--log-csv", required=True, help=LOG_CSV_HELP)

    p = add_stage(
        sub,
        "backbone-study",
        cmd_backbone_study,
        "the paper's Figure 4 (left): regressors with several backbones on one subject",
        "Reads: --prepared and the test X-rays (--xrays). Writes: --out (one row per backbone: "
        "training time, whether the loss settled, PoseNet mTRE).",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--xrays", required=True, help="the subject's xrays/ folder")
    p.add_argument("--out", required=True, help="backbones.csv")

    p = add_stage(
        sub,
        "train-method",
        cmd_train_method,
        "train the model of a method that learns one of its own (landmarks, scene coordinates)",
        "Reads: --prepared. Writes: --out ({method}.pt), --log-csv and a .config.json snapshot.",
    )
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True, help="{method}.pt")
    p.add_argument("--log-csv", required=True, help=LOG_CSV_HELP)
