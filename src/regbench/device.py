"""The torch device the config's ``device`` key names."""

from __future__ import annotations

import torch

from regbench.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present; asking for CUDA without it is a config error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'device' is 'cuda' but CUDA is not available")
    return torch.device(name)
