"""Regressor training: learns something, checkpoints, and resumes to the same weights."""

from __future__ import annotations

import pytest
import torch

from regbench.errors import InputError
from regbench.train import regressor as training
from regbench.train import xray_domain
from regbench.train.checkpoint import load_checkpoint

SETTINGS = {
    "seed": 0,
    "prior": {
        "rotation_deg_mean": [0, 0, 0],
        "rotation_deg_std": [4, 4, 4],
        "translation_mm_mean": [0, 850, 0],
        "translation_mm_std": [8, 20, 8],
    },
    "render": {"renderer": "trilinear", "n_points": 32, "bone_attenuation": 1.0},
    "regressor": {
        "backbone": "resnet10t",
        "steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "prior_scale": 1.5,
        "checkpoint_every": 2,
    },
    "geometry": {"height": 32},
    "augment": {"bone_attenuation": [1.0, 2.0]},
}


def train(prepared, out):
    return training.train_regressor(
        prepared, SETTINGS, 5, out, out.with_suffix(".log.csv"), torch.device("cpu")
    )


def test_killed_training_resumes_to_identical_weights(prepared, tmp_path, monkeypatch):
    reference = train(prepared, tmp_path / "a" / "regressor.pt")

    calls = {"n": 0}
    real_augment = xray_domain.augment

    def dying_augment(images, generator):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4, after the step-2 checkpoint
            raise KeyboardInterrupt("simulated kill")
        return real_augment(images, generator)

    out = tmp_path / "b" / "regressor.pt"
    monkeypatch.setattr(xray_domain, "augment", dying_augment)
    with pytest.raises(KeyboardInterrupt):
        train(prepared, out)
    assert not out.exists() and out.with_suffix(".partial").exists()
    assert load_checkpoint(out.with_suffix(".partial"))["step"] == 2

    monkeypatch.setattr(xray_domain, "augment", real_augment)
    resumed = train(prepared, out)
    assert not out.with_suffix(".partial").exists()
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    loaded = training.load_regressor(out, SETTINGS, torch.device("cpu"))
    assert torch.equal(
        loaded.backbone.get_classifier().weight, reference.backbone.get_classifier().weight
    )


def test_checkpoint_from_other_settings_or_corrupted_is_refused(prepared, tmp_path):
    out = tmp_path / "regressor.pt"
    train(prepared, out)
    other = {**SETTINGS, "regressor": {**SETTINGS["regressor"], "lr": 0.5}}
    with pytest.raises(InputError, match="other settings"):
        training.load_regressor(out, other, torch.device("cpu"))
    out.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(InputError, match="corrupted"):
        training.load_regressor(out, SETTINGS, torch.device("cpu"))
