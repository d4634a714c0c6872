"""ProST-m and ProST-t: the ProST-t loss, the step schedule, both stages against known answers."""

from __future__ import annotations

import math

import pytest
import torch

from regbench.geometry.poses import scale_translation
from regbench.methods.base import Trace
from regbench.methods.prost import cmaes, plateaued, sgd_stage
from regbench.models.variants import VARIANTS
from regbench.train.similarity import direction_loss, geodesic_gradient_loss

L = 500.0
CFG = {"momentum": 0.9, "window": 10}


def test_variants_differ_in_training_and_refiner():
    m, t = VARIANTS["prost-m"], VARIANTS["prost-t"]
    assert (m.volume, m.latent, m.target) == (t.volume, t.latent, t.target)
    assert (m.loss, t.loss) == ("matching", "geodesic")
    assert (m.refiner, t.refiner) == ("prost-m", "prost-t")
    assert "prost" not in VARIANTS


def test_geodesic_gradient_loss_hand_computed():
    """Rotations about one axis: the angle between them is the difference of the lengths."""
    g = torch.tensor([[0.3, 0.0, 0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([[0.1, 0.0, 0.0, 1.0, 0.0, 3.0]], dtype=torch.float64)
    assert geodesic_gradient_loss(g, target).item() == pytest.approx(0.2**2 + 2.0**2)
    # a about x, b about y: trace(Rx(a)^T Ry(b)) = cos a + cos b + cos a cos b
    g = torch.tensor([[0.4, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    ca, cb = math.cos(0.4), math.cos(0.3)
    angle = math.acos((ca + cb + ca * cb - 1) / 2)
    assert geodesic_gradient_loss(g, target).item() == pytest.approx(angle**2, rel=1e-9)


def test_geodesic_loss_sees_magnitude_direction_loss_does_not():
    target = torch.tensor([[0.1, 0.0, 0.0, 0.0, 0.02, 0.0]], dtype=torch.float64)
    assert direction_loss(3 * target, target).item() == pytest.approx(0.0, abs=1e-12)
    assert geodesic_gradient_loss(target, target).item() == pytest.approx(0.0, abs=1e-12)
    assert geodesic_gradient_loss(3 * target, target).item() == pytest.approx(
        0.2**2 + 0.04**2, rel=1e-9
    )


def test_geodesic_loss_has_finite_gradients_at_a_match():
    g = torch.tensor([[0.1, -0.2, 0.05, 0.01, 0.0, -0.03]], dtype=torch.float64)
    g.requires_grad_(True)
    geodesic_gradient_loss(g, g.detach()).backward()
    assert torch.isfinite(g.grad).all()


def test_prost_coordinates_roundtrip():
    g = torch.tensor([[1.0, 2.0, 3.0, 0.1, 0.2, 0.3]])
    assert torch.allclose(scale_translation(g, L), torch.tensor([[1.0, 2.0, 3.0, 50, 100, 150]]))
    assert torch.allclose(scale_translation(torch.tensor([[0.0, 0, 0, 0.01, 0, 0]]), L)[0, 3:],
                          torch.tensor([5.0, 0, 0]))  # fmt: skip


def test_plateau_test_is_the_authors():
    assert not plateaued([1.0] * 10, 10, 1e-3)  # needs more than the window
    assert plateaued([5.0] + [1.0] * 10, 10, 1e-3)
    assert not plateaued([1.0, 2.0] * 6, 10, 1e-3)  # std 0.5


def quadratic(centre_mm: torch.Tensor, start: torch.Tensor):
    """Cost 1/2 |camera position - centre|^2 / L^2 + 1/2 theta^2 (ProST-t's ideal similarity)."""

    def cost(pose: torch.Tensor) -> torch.Tensor:
        rot = start[:3, :3].mT @ pose[0, :3, :3]
        angle = ((rot - torch.eye(3, dtype=rot.dtype)) ** 2).sum() / 4
        return 0.5 * ((pose[0, :3, 3] - centre_mm) ** 2).sum() / L**2 + angle

    return cost


def test_stage_started_at_the_minimum_stays_there():
    start = torch.eye(4, dtype=torch.float64)
    cost = quadratic(torch.zeros(3, dtype=torch.float64), start)
    pose, iterations = sgd_stage(cost, start, L, lambda _: 0.05, CFG, 1e-12, 50, Trace())
    assert torch.allclose(pose[0], start, atol=1e-12)
    assert iterations == 10  # the first plateau test that can pass: 11 equal values


def test_stage_converges_on_a_quadratic_and_stops():
    start = torch.eye(4, dtype=torch.float64)
    centre = torch.tensor([10.0, -5.0, 20.0], dtype=torch.float64)
    cost = quadratic(centre, start)
    trace = Trace()
    pose, iterations = sgd_stage(cost, start, L, lambda _: 0.05, CFG, 1e-10, 2000, trace)
    assert torch.allclose(pose[0, :3, 3], centre, atol=0.05)
    assert iterations < 2000  # stopped by the plateau test
    assert len(trace.poses) == iterations


def test_cmaes_finds_a_shifted_quadratic_minimum():
    shift = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.0, -0.4], dtype=torch.float64)

    def f(x):
        return ((x - shift) ** 2).sum(-1)

    x, value, evaluations = cmaes(f, 6, 0.5, 10, 1500, 0)
    assert value < 1e-6 and torch.allclose(x, shift, atol=1e-3)
    assert evaluations <= 1500


def test_cmaes_at_the_minimum_stays_there():
    x, value, _ = cmaes(lambda x: (x**2).sum(-1), 6, 0.5, 10, 101, 1)
    assert value == 0.0 and torch.equal(x, torch.zeros(6, dtype=torch.float64))
