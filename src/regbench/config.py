"""The workflow's config: the JSON schema shipped with the package, which validates a config and
fills every default, for the Snakefile and for the verbs that read a config file directly."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import resources
from pathlib import Path

from regbench.errors import InputError

SCHEMA = Path(str(resources.files("regbench") / "schemas" / "config.schema.yaml"))


def _import_jsonschema() -> None:
    """Import jsonschema without its optional IRI format checker.

    Why: with ``rfc3987-syntax`` installed, importing jsonschema compiles some forty grammars
    (about 2 s), which every Snakemake call (a dry run included) would pay; the schema uses no
    IRI formats. The block is lifted right after, so nothing else in the process is affected.
    """
    if "jsonschema" in sys.modules:
        return
    blocked = "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # ImportError on import
    try:
        import jsonschema  # noqa: F401
    finally:
        if blocked:
            del sys.modules["rfc3987_syntax"]


def validate_config(cfg: dict, where: str, cache_dir: str | Path | None = None) -> None:
    """Validate ``cfg`` in place against the schema (filling defaults); errors name ``where``.

    With ``cache_dir``, a config validated before (the same keys and values, the same schema)
    is filled from the result kept there instead of validated again: Snakemake plans on every
    call, and validation is most of what planning costs (jsonschema's import and the check).
    """
    if not SCHEMA.is_file():
        raise InputError(f"config schema not found: {SCHEMA} (a broken regbench install)")
    cached = _cache_path(cfg, cache_dir)
    if cached is not None and cached.is_file():
        try:
            filled = json.loads(cached.read_text())
        except (OSError, ValueError):
            filled = None  # unreadable: validate again (and rewrite it)
        if isinstance(filled, dict):
            cfg.clear()
            cfg.update(filled)
            return
    _import_jsonschema()
    from snakemake.utils import validate

    try:
        validate(cfg, str(SCHEMA))
    except Exception as exc:
        raise InputError(f"{where} is invalid: {exc}") from exc
    if cached is not None:
        _write_cache(cfg, cached)


def _cache_path(cfg: dict, cache_dir: str | Path | None) -> Path | None:
    """Where the validated form of ``cfg`` is kept: named by a hash of the config and the schema
    (None without a cache folder, or for a config JSON cannot hold exactly)."""
    if cache_dir is None:
        return None
    try:
        text = json.dumps(cfg, allow_nan=False)  # key order kept: it orders datasets and rows
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(text.encode() + SCHEMA.read_bytes()).hexdigest()[:32]
    return Path(cache_dir) / f"validated-config-{digest}.json"


def _write_cache(cfg: dict, path: Path) -> None:
    """Atomically, and best effort: a read-only folder only costs the next call a validation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, path)
    except OSError:
        pass


def load_config(path: str | Path | None) -> dict:
    """The validated config of ``path``; ``None``: the schema's defaults alone."""
    import yaml

    cfg: dict = {}
    where = "the schema's defaults"
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise InputError(f"config file not found: {config_path}")
        cfg = yaml.safe_load(config_path.read_text()) or {}
        where = f"config file {config_path}"
    validate_config(cfg, where)
    return cfg


PRIOR_KEYS = ("rotation_deg_mean", "rotation_deg_std", "translation_mm_mean", "translation_mm_std")


def subject_prior(default: dict, spec: dict, view: str | None = None) -> dict:
    """The prior block of one subject: the global one, then its dataset's, then its view's.

    Why layered: a dataset's C-arm sits elsewhere than the global AP default (DeepFluoro's
    source is posterior, Ljubljana's lateral views are 90 degrees from AP); each level sets only
    the keys it changes. ``spec`` is the dataset's config (``prior``, ``view_priors``).
    """
    out = {k: list(default[k]) for k in PRIOR_KEYS}
    view_layer = (spec.get("view_priors") or {}).get(view) if view else None
    for layer in (spec.get("prior"), view_layer):
        for key, value in (layer or {}).items():
            if key not in out:
                raise ValueError(f"unknown prior key '{key}' (known: {', '.join(PRIOR_KEYS)})")
            out[key] = list(value)
    return out
