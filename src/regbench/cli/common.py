"""What every stage verb shares: its ``--settings`` and ``--threads`` options, the parsing of
``--settings``, and the opening step (settings, seed, device, prepared subject).

Nothing heavy is imported at module level, so ``regbench --help`` stays free of torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regbench.errors import InputError

if TYPE_CHECKING:
    import torch

    from regbench.data.subject import Prepared

Handler = Callable[[argparse.Namespace], None]
Subparsers = Any  # argparse's _SubParsersAction, which it does not export

# Seed key of the patient-agnostic stages, in place of one subject id.
AGNOSTIC = "_agnostic"


def parse_settings(text: str) -> dict:
    """``--settings`` as a dict; a broken JSON is the caller's mistake, not a crash."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--settings is not valid JSON: {exc}") from exc


def dataset_spec(s: dict, dataset: str) -> dict:
    """The dataset's own section of ``--settings`` (empty when the rule passes none)."""
    return (s.get("datasets") or {}).get(dataset) or {}


def add_stage(
    sub: Subparsers, name: str, func: Handler, help_: str, io: str
) -> argparse.ArgumentParser:
    """A stage verb: ``io`` (what it reads and writes) ends its ``--help``, and it takes the
    config sections it depends on as ``--settings`` so its rule reruns when they change."""
    p = sub.add_parser(name, help=help_, description=f"{help_}. {io}")
    p.add_argument("--settings", required=True, help="JSON of the validated config sections")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
    p.set_defaults(func=func)
    return p


def add_subject_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--subject", required=True)


def pooled_subjects(prepared: Sequence[str | Path]) -> list[str]:
    """Subject ids of the ``.../{subject}/prepared`` folders a patient-agnostic model pools."""
    return [Path(p).parent.name for p in prepared]


def seed_key(args: argparse.Namespace) -> tuple[str, ...]:
    """Whose stage this is, for its seed: one subject, or the subjects a patient-agnostic
    stage pools (``--subject`` absent or None), so each model gets a seed of its own."""
    if getattr(args, "subject", None) is not None:
        return (args.dataset, args.subject)
    return (args.dataset, AGNOSTIC, *pooled_subjects(args.prepared))


@dataclass(frozen=True)
class Opening:
    """What a stage starts from; ``device`` and ``prepared`` are None unless asked for."""

    settings: dict
    seed: int
    device: torch.device | None = None
    prepared: Prepared | None = None

    @classmethod
    def of(
        cls,
        settings: dict,
        seed_key: Sequence[str] = (),
        *,
        device: bool = False,
        prepared: str | Path | None = None,
    ) -> Opening:
        """``seed``: derived from the master seed and ``seed_key`` (the master seed itself
        when the key is empty). Only what is asked for is loaded: rendering imports are slow."""
        seed = settings["seed"]
        if seed_key:
            from regbench.seeding import derive_seed

            seed = derive_seed(seed, *seed_key)
        resolved = None
        if device:
            from regbench.device import resolve_device

            resolved = resolve_device(settings["device"])
        subject = None
        if prepared is not None:
            from regbench.data.subject import load_prepared

            subject = load_prepared(prepared)
        return cls(settings, seed, resolved, subject)


def open_stage(
    args: argparse.Namespace, *seed_tags: str, device: bool = False, prepared: bool = False
) -> Opening:
    """The opening of a stage handler: ``--settings``; with ``seed_tags`` the stage's own seed
    (master seed, subject or pooled subjects, tags); the config's device; ``--prepared``."""
    key = (*seed_key(args), *seed_tags) if seed_tags else ()
    return Opening.of(
        parse_settings(args.settings),
        key,
        device=device,
        prepared=args.prepared if prepared else None,
    )
