"""Seeds derived from the master seed, so each stage and subject has its own stream."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(master: int, *names: object) -> int:
    """A 31-bit seed that depends only on ``master`` and ``names`` (stable across runs)."""
    text = ":".join([str(master), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator on the same seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
