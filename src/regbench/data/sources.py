"""Where a raw file comes from, and the record that marks it verified: what the dataset registry
and the planning read, kept apart from the HTTP client (whose imports a dry run need not pay)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The record beside a verified file; the workflow tracks it instead of the file itself.
RECORD_SUFFIX = ".sha256"


@dataclass(frozen=True)
class Source:
    """Where a file comes from, how to check it, and under which terms it may be used.

    ``filename`` is the name of the payload as downloaded (relative to the dataset folder); when
    ``unpack`` is ``"zip"`` the payload is an archive and ``member`` is the file to extract from it.
    ``size``/``sha256`` are left ``None`` when they could not be confirmed; the first download then
    records them beside the file.
    """

    name: str
    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    unpack: str | None = None
    member: str | None = None
    licence: str = ""
    homepage: str = ""


def record_path(path: str | Path) -> str:
    """The ``.sha256`` record that marks a raw file as downloaded or verified."""
    return f"{path}{RECORD_SUFFIX}"
