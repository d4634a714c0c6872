"""SOPI and CDReg: their schedules, optimiser, decomposition, losses, networks and refiners."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import SCHEMA, pose_deg
from snakemake.utils import validate

from regbench.methods.base import Context, Trace
from regbench.methods.learned import LearnedSimilarity
from regbench.models.cdreg import frequency_split
from regbench.models.inputs import standardize
from regbench.models.residual import LatentResidual
from regbench.models.similarity import SimilarityGeometry
from regbench.models.sopi import CompositeEncoder
from regbench.optim.first_order import descend, triangular_lr
from regbench.rendering.renderer import make_renderer
from regbench.train.cdreg import convex_target, correlation, decomposition_loss
from regbench.train.similarity import build_similarity_model, step_losses, variant_config
from regbench.train.sopi import geodesic_loss


@pytest.fixture(scope="module")
def settings() -> dict:
    s = {
        "seed": 0,
        "geometry": {"height": 32, "width": 32},
        "render": {"n_points": 32},
        "similarity": {"n_points": 16},
        "sopi": {"registration": {"iterations": 8}},
        "cdreg": {"training": {"width": 4, "head_hidden": 8}, "registration": {"iterations": 8}},
    }
    validate(s, str(SCHEMA))
    return s


@pytest.fixture(scope="module")
def setup(prepared, settings) -> SimilarityGeometry:
    return SimilarityGeometry(prepared, settings, "cpu")


def _model(variant: str, settings: dict):
    torch.manual_seed(0)
    return build_similarity_model(variant, variant_config(settings, variant), settings)


# ------------------------------------------------------------------ SOPI's schedule and optimiser


@pytest.mark.parametrize(
    "iteration, expected",
    [(0, 4e-4), (10, 5e-4), (20, 6e-4), (30, 5e-4), (40, 4e-4), (45, 4.5e-4), (60, 6e-4)],
)
def test_triangular_cyclic_lr_at_known_iterations(iteration, expected):
    """SOPI's test-time schedule (base 4e-4, peak 6e-4, 20 iterations up)."""
    assert triangular_lr(iteration, 4e-4, 6e-4, 20) == pytest.approx(expected, rel=1e-12)


def test_triangular_cyclic_lr_is_pytorchs_cycliclr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-4, max_lr=1e-3, step_size_up=7, cycle_momentum=False
    )
    for iteration in range(30):
        assert triangular_lr(iteration, 1e-4, 1e-3, 7) == pytest.approx(
            scheduler.get_last_lr()[0], rel=1e-9
        )
        opt.step()
        scheduler.step()


def test_sgd_with_momentum_steps_on_a_quadratic():
    """Two steps of ``descend`` (SGD, lr 0.1, momentum 0.9) on 1/2 |t - t*|^2 of the camera
    position from t0: v1 = -lr g1, v2 = v1 - lr (momentum g1 + (1 - lr) g1)."""
    t0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    target = torch.tensor([4.0, 0.0, -1.0], dtype=torch.float64)
    init = torch.eye(4, dtype=torch.float64)
    init[:3, 3] = t0
    poses = []
    lr, momentum = 0.1, 0.9
    descend(
        lambda pose: 0.5 * ((pose[0, :3, 3] - target) ** 2).sum(),
        init,
        lambda groups: torch.optim.SGD(groups, momentum=momentum),
        (lr, lr),
        2,
        lambda iteration, pose: poses.append(pose),
    )
    g1 = t0 - target
    v1 = -lr * g1
    v2 = v1 - lr * (momentum * g1 + (1 - lr) * g1)
    assert torch.allclose(poses[0][:3, 3], t0 + v1, atol=1e-10)
    assert torch.allclose(poses[1][:3, 3], t0 + v2, atol=1e-10)
    assert torch.allclose(poses[1][:3, :3], torch.eye(3, dtype=torch.float64), atol=1e-12)


# ------------------------------------------------------------------ SOPI's initialiser and encoder


def test_geodesic_loss_is_zero_at_the_truth_and_the_angle_of_a_rotation_about_the_isocentre():
    pose = pose_deg((2.0, -1.0, 0.5), (3.0, 860.0, -2.0))
    assert float(geodesic_loss(pose, pose, 510.0)) < 1e-5
    theta = math.radians(5.0)
    rotation = torch.eye(4, dtype=torch.float64)
    rotation[:2, :2] = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    moved = rotation @ pose  # the camera turned about the world origin (the isocentre)
    assert float(geodesic_loss(moved, pose, 510.0)) == pytest.approx(theta, rel=1e-5)


def test_composite_encoder_levels_and_sopi_distance_is_the_sum_of_level_mses(settings):
    torch.manual_seed(0)
    levels = CompositeEncoder(8)(torch.randn(2, 1, 64, 64))
    assert [tuple(f.shape) for f in levels] == [(2, 8, 8, 8), (2, 8, 8, 8), (2, 16, 4, 4)]
    model = _model("sopi", settings).eval()
    x, d = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        e_x, bone = model.embed_xray(x)
        e_d = model.embed_drr_images(d)
        expected = sum(
            ((a - b) ** 2).flatten(1).mean(-1)
            for a, b in zip(
                model.encoder_xray(standardize(x)), model.encoder_drr(standardize(d)), strict=True
            )
        )
    assert e_x.shape == e_d.shape == (2, 8 * 16 * 2 + 16 * 4)
    assert torch.allclose(bone, torch.ones(2, dtype=torch.float64))  # render.bone_attenuation
    assert torch.allclose(model.distance(e_x, e_d), expected.double(), rtol=1e-4)


# ------------------------------------------------------------------ CDReg's parts


def test_frequency_split_reconstructs_and_keeps_constants():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11)
    low, high = frequency_split(x, 3)
    assert torch.allclose(low + high, x, atol=1e-6)
    assert float(high.abs().mean()) > 0.1  # noise is mostly high frequency
    constant = torch.full((1, 2, 8, 8), 2.5)
    low, high = frequency_split(constant, 5)
    assert torch.allclose(low, constant) and torch.allclose(high, torch.zeros_like(high))


def test_decomposition_loss_on_a_hand_computed_case():
    """CC(high_x, high_d)^2 / (CC(low_x, low_d) + 1.01): identical low features (CC 1) and
    opposite high ones (CC -1) give 1 / 2.01; orthogonal high patterns give 0."""
    pattern = torch.tensor([1.0, 2.0, 4.0, 1.0]).reshape(1, 1, 2, 2)
    assert float(correlation(pattern, 2 * pattern + 3)) == pytest.approx(1.0, abs=1e-6)
    loss = decomposition_loss(pattern, pattern, pattern.clone(), -pattern)
    assert float(loss) == pytest.approx(1 / 2.01, rel=1e-5)
    a = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 2, 2)
    b = torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 1, 2, 2)
    assert float(decomposition_loss(pattern, a, pattern, b)) == pytest.approx(0.0, abs=1e-10)


def test_convex_target_is_zero_at_the_truth_increasing_and_convex():
    d = torch.linspace(0, 60, 121, dtype=torch.float64)
    f = convex_target(d, 5.0)
    assert float(f[0]) == 0.0
    assert (f.diff() > 0).all()
    assert (f.diff().diff() >= -1e-12).all()
    assert float(convex_target(torch.tensor(15.0), 5.0)) == pytest.approx(5 * (10**0.5 - 1))


def test_cdreg_matched_initialisation_compares_like_with_like(settings):
    """Matched: an X-ray embeds exactly as a DRR whose density channel is that image, whatever
    its learned channels hold; each head increases with the squared feature differences."""
    model = _model("cdreg", settings).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 32, 32)
    drr = torch.cat([x, torch.randn(2, model.channels - 1, 32, 32)], dim=1)
    with torch.no_grad():
        e_x, e_d = model.embed_xray(x)[0], model.embed_drr_images(drr)
        assert torch.allclose(e_x.double(), e_d.double(), atol=1e-5)
        low, high = model.split(e_x)
        step = 0.1 * torch.randn_like(low)
        for head, a in ((model.low_head, low), (model.high_head, high)):
            values = [float(head(a, a + k * step)[0]) for k in (0, 1, 2, 4)]
            assert values == sorted(values) and values[-1] > values[0]
    s = copy.deepcopy(settings)
    s["cdreg"]["training"]["matched_init"] = False
    independent = _model("cdreg", s).eval()
    with torch.no_grad():
        e_x, e_d = independent.embed_xray(x)[0], independent.embed_drr_images(drr)
    assert not torch.allclose(e_x.double(), e_d.double(), atol=1e-3)


# ------------------------------------------------------------------ training and refinement


@pytest.mark.parametrize("variant", ["sopi", "cdreg"])
def test_a_training_step_sends_finite_gradients_to_every_part(setup, settings, variant):
    model = _model(variant, settings)
    gt = torch.cat([pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, 1.0)), pose_deg((-1.0, 1.0, 0.0))])
    start = torch.cat([pose_deg((2.0, -1.0, 0.0), (6.0, 860.0, -3.0)), pose_deg((0.5, 2.0, 1.0))])
    with torch.no_grad():
        xrays = setup.drr(gt).sum(1, keepdim=True)
    residual = LatentResidual(model, setup, xrays, model.features(setup.density))
    cfg = variant_config(settings, variant)
    terms = step_losses(residual, start, gt, xrays, torch.ones(2), cfg)
    assert set(terms) == (
        {"matching", "initialiser"} if variant == "sopi" else {"convex", "decomposition"}
    )
    sum(w * value for w, value in terms.values()).backward()
    parts = (
        (model.encoder_xray, model.encoder_drr, model.initialiser)
        if variant == "sopi"
        else (model.encoder, model.low_head, model.high_head, model.volume_net)
    )
    if variant == "cdreg":
        # matched start: the learned channels enter through zero shallow weights, so the first
        # step moves those weights and the volume network is reached from the second step on
        assert float(model.encoder.shallow[0].weight.grad[:, 1:].abs().sum()) > 0
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        model.zero_grad()
        residual = LatentResidual(model, setup, xrays, model.features(setup.density))
        terms = step_losses(residual, start, gt, xrays, torch.ones(2), cfg)
        sum(w * value for w, value in terms.values()).backward()
    for part in parts:
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("variant", ["sopi", "cdreg"])
def test_refinement_lowers_its_own_objective(prepared, setup, settings, variant):
    """On an untrained model (a rough distance), small steps: SOPI's without momentum (the
    quadratic test checks it), so that its last pose is not an overshoot."""
    s = copy.deepcopy(settings)
    s["sopi"]["registration"]["momentum"] = 0.0
    model = _model(variant, s).eval()
    context = Context(make_renderer(prepared, 1.0), None, 32, s, 0, model, setup)
    method = LearnedSimilarity(context, variant)
    with torch.no_grad():
        xray = setup.drr(pose_deg()).sum(1, keepdim=True)
    start = pose_deg((2.0, -1.5, 1.0), (5.0, 865.0, -4.0))[0]
    trace = Trace()
    pose, iterations = method.refine(xray, start, trace)
    residual = method.residual_fn(xray)
    with torch.no_grad():
        before = float(residual.distance_in_pose(start[None].double()))
        after = float(residual.distance_in_pose(pose[None]))
    assert iterations == 8 and len(trace.poses) == 8
    assert after < before
