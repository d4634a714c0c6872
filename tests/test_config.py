"""config.yaml is validated by the JSON schema; mistakes name the key."""

import copy

import pytest
import yaml
from conftest import REPO, SCHEMA
from snakemake.utils import validate


def load(path):
    return yaml.safe_load(path.read_text())


def check(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def test_default_and_test_configs_are_valid_and_filled():
    cfg = check(load(REPO / "config.yaml"))
    assert {"posenet", "diffpose", "ours-so4"} <= set(cfg["methods"])
    assert "bobyqa" in cfg["datasets"]["embedded-cohort"]["agnostic"]["methods"]
    assert cfg["diffpose"]["lr_rotation"] == 0.01  # default filled from the schema
    check(load(REPO / "tests" / "e2e" / "config.yaml"))


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"bogus": 1}, "'bogus' was unexpected"),
        ({"diffpose": {"max_iterations": "ten"}}, "'ten' is not of type 'integer'"),
        ({"diffpose": {"max_iterations": -5}}, "max_iterations"),
        ({"geometry": {"height": 0}}, "height"),
        ({"methods": ["posenet", "magic"]}, "'magic' is not one of"),
        ({"datasets": {"nowhere": {}}}, "'nowhere' was unexpected"),
        ({"regressor": {"steps": 0}}, "steps"),
        ({"device": "tpu"}, "'tpu' is not one of"),
    ],
)
def test_invalid_configs_are_rejected_with_the_key(patch, message):
    cfg = load(REPO / "config.yaml")
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    with pytest.raises(Exception, match=message):
        check(cfg)


def test_a_validated_config_is_read_back_from_the_cache(tmp_path):
    """The second validation of the same config fills it from the cache, identically (same
    values, same key order); another config, or a broken cache file, is validated afresh."""
    import json

    from regbench.config import validate_config
    from regbench.errors import InputError

    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    first, second = copy.deepcopy(raw), copy.deepcopy(raw)
    validate_config(first, "config", cache_dir=tmp_path)
    (cached,) = tmp_path.glob("validated-config-*.json")
    validate_config(second, "config", cache_dir=tmp_path)
    assert json.dumps(second) == json.dumps(first)  # defaults filled, order kept
    cached.write_text("{broken")
    third = copy.deepcopy(raw)
    validate_config(third, "config", cache_dir=tmp_path)
    assert json.dumps(third) == json.dumps(first)
    bad = copy.deepcopy(raw)
    bad["seed"] = "zero"
    with pytest.raises(InputError, match="seed"):
        validate_config(bad, "config", cache_dir=tmp_path)  # a new config is checked
