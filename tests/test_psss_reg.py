"""PSSS-reg against known answers: the curriculum's ranges, the network's shapes, each loss by
hand, ZNCC's invariances, the refinement on a DRR of the embedded CT, its own start, and a
few-step training written and refused on load."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from regbench.config import load_config
from regbench.errors import InputError
from regbench.evaluate import mtre
from regbench.geometry.poses import carm_params, carm_pose
from regbench.geometry.priors import PosePrior
from regbench.methods import OWN_MODELS, build_method, method_class
from regbench.methods.base import Context, Trace
from regbench.methods.psss_reg import PSSSReg
from regbench.methods.similarity import zncc
from regbench.models.psss_net import NetShape, PSSSNet
from regbench.rendering.renderer import make_renderer
from regbench.train.psss_reg import (
    curriculum_fraction,
    curriculum_prior,
    pose_loss,
    reconstruction_loss,
)

N_POINTS = 32
SHAPE = NetShape(base_channels=4, depth=3, grid=2, heads=2)


def true_pose() -> torch.Tensor:
    rot = torch.tensor([[0.03, -0.02, 0.04]], dtype=torch.float64)
    return carm_pose(rot, torch.tensor([[4.0, 840.0, -6.0]], dtype=torch.float64))[0]


def settings(steps: int = 2) -> dict:
    """The default config's sections a training and a registration see, CPU-sized."""
    cfg = load_config(None)
    blob = {k: cfg[k] for k in ("seed", "device", "threads", "prior", "geometry", "augment")}
    blob["render"] = {**cfg["render"], "n_points": N_POINTS}
    training = {**cfg["psss-reg"]["training"], "steps": steps, "batch_size": 2}
    training.update(base_channels=SHAPE.base_channels, depth=SHAPE.depth, grid=SHAPE.grid)
    training.update(heads=SHAPE.heads, checkpoint_every=1)
    blob["psss-reg"] = {"training": training, "registration": cfg["psss-reg"]["registration"]}
    return blob


def test_curriculum_widens_the_pose_range_in_stages():
    fractions = [curriculum_fraction(s, 300, 3, 1 / 3) for s in (0, 99, 100, 199, 200, 299)]
    np.testing.assert_allclose(fractions, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert curriculum_fraction(0, 10, 1, 0.2) == 1.0  # one stage: no curriculum
    assert [curriculum_fraction(s, 4, 2, 0.5) for s in range(4)] == [0.5, 0.5, 1.0, 1.0]
    prior_cfg = load_config(None)["prior"]
    cfg = {"steps": 300, "curriculum_stages": 3, "curriculum_start": 0.25, "prior_scale": 2.0}
    first, last = curriculum_prior(prior_cfg, cfg, 0), curriculum_prior(prior_cfg, cfg, 299)
    assert first.translation_mm_mean == last.translation_mm_mean == (0.0, 850.0, 0.0)
    np.testing.assert_allclose(first.rotation_deg_std, [2.0, 2.0, 2.0])  # 4 deg x 2 x 0.25
    np.testing.assert_allclose(last.translation_mm_std, [16.0, 40.0, 16.0])  # (8,20,8) x 2


def test_network_shapes_and_its_pose_parameterization(prepared):
    prior = PosePrior.from_config(load_config(None)["prior"])
    net = PSSSNet(SHAPE, prior, prepared.geometry)
    for h, w in ((32, 32), (30, 36)):  # any detector size: the tokens are pooled
        out = net(torch.rand(2, 1, h, w))
        assert out.params.shape == (2, 6)
        assert out.reconstruction.shape == out.target.shape == (2, 1, h, w)
    torch.testing.assert_close(out.target.mean(dim=(-2, -1)), torch.zeros(2, 1), atol=1e-5, rtol=0)
    rot, trans = carm_params(true_pose()[None])
    pose = net.to_pose(net.normalise(rot, trans))
    torch.testing.assert_close(pose[0], true_pose(), atol=1e-3, rtol=0)  # float32 targets
    assert net.predict(torch.rand(1, 1, 32, 32)).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        PSSSNet(NetShape(4, 3, 2, 3), prior)


def test_losses_on_hand_computed_cases():
    pred = torch.zeros(2, 6)
    target = torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]])
    # rotation norms 5 and 0, translation norms 1 and 3: ((5 + 1) + (0 + 3)) / 2
    assert pose_loss(pred, target).item() == pytest.approx(4.5)
    image = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    assert reconstruction_loss(image, torch.zeros_like(image)).item() == pytest.approx(1.5)


def test_zncc_of_an_image_with_itself_and_an_affine_copy_is_one():
    x = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    score = zncc()
    torch.testing.assert_close(score(x, x), torch.ones(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(score(x, 3.0 * x + 2.0), torch.ones(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(score(x, 2.0 - x), -torch.ones(2), atol=1e-3, rtol=0)
    edged = x.clone()
    edged[..., :2, :] = 5.0  # a collimator edge in one image only
    assert score(x, edged).min() < 0.9
    torch.testing.assert_close(zncc(2)(x, edged), torch.ones(2), atol=1e-3, rtol=0)


class FixedNet(nn.Module):
    """A stand-in network whose estimate is a given pose."""

    def __init__(self, pose: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.pose = pose

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.pose[None].expand(len(images), 4, 4)


def method_for(prepared, start: torch.Tensor) -> PSSSReg:
    context = Context(make_renderer(prepared, 1.0), None, N_POINTS, settings())
    context.model = FixedNet(start)
    return build_method("psss-reg", context)


def test_refinement_recovers_a_small_offset_from_its_own_start(prepared):
    """A DRR of the embedded CT (32 px, 6 mm) at a known pose, started 1.7 deg and 8 mm off:
    the refinement lowers 1 - ZNCC and most of the error."""
    gt = true_pose()
    renderer = make_renderer(prepared, 1.0)
    image = renderer.render(gt[None].float(), N_POINTS)
    rot, trans = carm_params(gt[None])
    start = carm_pose(rot + math.radians(1.0), trans + torch.tensor([[4.0, 6.0, -3.0]]))[0]
    method = method_for(prepared, start)
    result = method.register(image)  # no regressor in the context: the network's start
    assert result.status == "ok" and result.pose.dtype == torch.float64
    torch.testing.assert_close(result.trace.poses[0], start)
    torch.testing.assert_close(result.trace.poses[-1], result.pose)
    loss = [
        1.0 - zncc()(renderer.render(p[None].float(), N_POINTS), image).item()
        for p in (start, result.pose)
    ]
    assert loss[1] < 0.5 * loss[0], loss
    before = mtre(start.numpy(), gt.numpy(), prepared.points)[0]
    after = mtre(result.pose.numpy(), gt.numpy(), prepared.points)[0]
    assert after < 0.3 * before, (before, after)


def test_refinement_stops_at_the_tolerance(prepared):
    gt = true_pose()
    image = make_renderer(prepared, 1.0).render(gt[None].float(), N_POINTS)
    method = method_for(prepared, gt)
    method.context.settings["psss-reg"]["registration"]["tol"] = 0.01
    pose, iterations = method.refine(image, gt.float(), Trace())
    assert iterations == 1  # started at the truth: 1 - ZNCC is about 0
    assert mtre(pose.numpy(), gt.numpy(), prepared.points)[0] < 1e-3


def test_training_writes_model_log_and_snapshot_and_refuses_other_settings(prepared, tmp_path):
    assert "psss-reg" in OWN_MODELS and method_class("psss-reg") is PSSSReg
    cfg = settings(steps=2)
    out, log_csv = tmp_path / "psss-reg.pt", tmp_path / "psss-reg.log.csv"
    PSSSReg.train(prepared, cfg, 7, out, log_csv, torch.device("cpu"))
    assert out.is_file() and not out.with_suffix(".partial").exists()
    log = pd.read_csv(log_csv)
    assert list(log["step"]) == [1, 2] and np.isfinite(log["loss"]).all()
    assert out.with_suffix(".config.json").is_file()
    model = PSSSReg.load_model(out, cfg, torch.device("cpu"))
    assert not model.training and model.geometry == prepared.geometry
    assert model.predict(torch.rand(1, 1, 32, 32)).dtype == torch.float64
    other_registration = copy.deepcopy(cfg)
    other_registration["psss-reg"]["registration"]["max_iterations"] = 3
    PSSSReg.load_model(out, other_registration, torch.device("cpu"))  # no retraining
    other = copy.deepcopy(cfg)
    other["psss-reg"]["training"]["curriculum_stages"] = 2
    with pytest.raises(InputError, match=r"psss-reg model .*psss-reg\.pt was trained with other"):
        PSSSReg.load_model(out, other, torch.device("cpu"))
