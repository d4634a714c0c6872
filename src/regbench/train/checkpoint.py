"""Resumable training state and checkpoint validation.

A checkpoint carries a fingerprint of the settings that produced it; loading one made under other
settings, or a corrupted file, is refused instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from regbench.errors import InputError
from regbench.io import save_torch


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_checkpoint(path: str | Path, settings: dict | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; refuse a foreign or broken one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupted zip, truncated pickle, ...
        raise InputError(f"checkpoint {path} is corrupted or unreadable: {exc}") from exc
    if not isinstance(blob, dict) or "fingerprint" not in blob or "state_dict" not in blob:
        raise InputError(f"checkpoint {path} is not a regbench checkpoint")
    if settings is not None and blob["fingerprint"] != fingerprint(settings):
        raise InputError(
            f"checkpoint {path} was made with other settings "
            f"(fingerprint {blob['fingerprint']} != {fingerprint(settings)})"
        )
    return blob


def save_checkpoint(blob: dict[str, Any], settings: dict, path: str | Path) -> None:
    save_torch({**blob, "fingerprint": fingerprint(settings), "settings": settings}, path)
