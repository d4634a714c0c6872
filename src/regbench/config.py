"""The workflow's config outside Snakemake: read a YAML file and validate it against the same
JSON schema the Snakefile uses, which also fills every default."""

from __future__ import annotations

from pathlib import Path

from regbench.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: str | Path | None) -> dict:
    """The validated config of ``path``; ``None``: the schema's defaults alone."""
    import yaml
    from snakemake.utils import validate

    cfg: dict = {}
    where = "the schema's defaults"
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise InputError(f"config file not found: {config_path}")
        cfg = yaml.safe_load(config_path.read_text()) or {}
        where = f"config file {config_path}"
    if not SCHEMA.is_file():
        raise InputError(f"config schema not found: {SCHEMA} (run from a checkout of regbench)")
    try:
        validate(cfg, str(SCHEMA))  # fills the defaults
    except Exception as exc:
        raise InputError(f"{where} is invalid: {exc}") from exc
    return cfg
