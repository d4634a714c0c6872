"""File input and output: a killed job must never leave a file that looks complete.

Every writer in the package goes through :func:`atomic_path`, which yields a temporary name in
the destination folder and renames it onto the final name only when the block finishes. A step
that writes several files wraps them in :func:`all_or_nothing`, so a failure after the first
file does not leave that one behind. Csv inputs are read with :func:`read_table`, whose errors
name the file.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regbench.errors import InputError


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Temporaries of ``path`` left by a killed earlier attempt (SIGKILL skips the cleanup below)
    are removed first: one job owns each output, so no other writer can be using them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        stale.unlink(missing_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextmanager
def all_or_nothing(paths: Iterable[str | Path]) -> Iterator[None]:
    """If the block raises, remove the files of ``paths`` that it wrote, then re-raise.

    Atomic writes make each file complete or absent; this makes a step's set of files complete
    or absent. A file the block did not write (absent, or a previous run's left untouched) is
    left as it is: an atomic write replaces the file, which changes its inode.
    """
    before = {Path(p): _identity(Path(p)) for p in paths}
    try:
        yield
    except BaseException:
        for path, identity in before.items():
            if _identity(path) not in (None, identity):
                path.unlink(missing_ok=True)
        raise


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def save_torch(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_table(
    path: str | Path, what: str, columns: Sequence[str] = (), dtype: dict | None = None
) -> pd.DataFrame:
    """A csv input that must exist, parse and have ``columns``; errors name ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path}: unreadable csv ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} file {path}: missing columns {missing}")
    return df


def numeric(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """``df[columns]`` as float64; entries that are not numbers become NaN (for a finiteness check)."""
    return df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, copy=True)
