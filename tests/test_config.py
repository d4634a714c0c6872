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
    assert {"posenet", "diffpose", "bobyqa"} <= set(cfg["methods"])
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
