"""Configs as Snakemake sees them, without importing torch (planning tests run it in a
subprocess to check that planning imports none)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from regbench.config import validate_config

REPO = Path(__file__).resolve().parents[1]


def layered_config(*overrides: Path) -> dict:
    """config.yaml with each override merged as Snakemake's --configfile merges nested
    mappings (two levels deep), validated and filled with the schema's defaults."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for path in overrides:
        for key, value in yaml.safe_load(Path(path).read_text()).items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                merged = copy.deepcopy(cfg[key])
                for k, v in value.items():
                    merged[k] = {**merged[k], **v} if isinstance(merged.get(k), dict) else v
                cfg[key] = merged
            else:
                cfg[key] = value
    validate_config(cfg, "layered config")
    return cfg


def paper_config() -> dict:
    return layered_config(REPO / "workflow" / "configs" / "paper.yaml")
