import math

import pytest
import torch

from regbench.models.latent import (
    LATENTS,
    EuclideanLatent,
    HyperbolicLatent,
    SphericalLatent,
    make_latent,
)

F64 = torch.float64
METRICS = [SphericalLatent(), HyperbolicLatent(c=1.0), HyperbolicLatent(c=0.3)]
ALL = [*METRICS, EuclideanLatent()]


def points(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) * scale


def test_registry_names_and_factory():
    assert set(LATENTS) == {"spherical", "euclidean", "hyperbolic"}
    for name, cls in LATENTS.items():
        assert cls.name == name
    assert make_latent("hyperbolic", c=0.5) == HyperbolicLatent(c=0.5)
    with pytest.raises(ValueError, match="unknown latent"):
        make_latent("toroidal")


@pytest.mark.parametrize("latent", ALL, ids=lambda x: repr(x))
def test_zero_on_identical_inputs_and_symmetric(latent):
    a, b = points(32, 16, 0), points(32, 16, 1)
    assert latent.distance(a, a).abs().max() < 1e-7
    assert latent.residual(a, a).abs().max() < 1e-7
    assert torch.allclose(latent.distance(a, b), latent.distance(b, a), atol=1e-10)


@pytest.mark.parametrize("latent", METRICS, ids=lambda x: repr(x))
def test_triangle_inequality(latent):
    a, b, c = points(256, 8, 2), points(256, 8, 3), points(256, 8, 4)
    lhs = latent.distance(a, c)
    rhs = latent.distance(a, b) + latent.distance(b, c)
    assert (lhs <= rhs + 1e-10).all()


@pytest.mark.parametrize("latent", ALL, ids=lambda x: repr(x))
def test_residual_norm_is_distance(latent):
    a, b = points(64, 16, 5), points(64, 16, 6)
    b[:8] = a[:8] + 1e-6 * points(8, 16, 7)  # nearly identical pairs too
    norm = latent.residual(a, b).norm(dim=-1)
    if isinstance(latent, EuclideanLatent):  # squared distance: |r|^2 == s
        norm = norm**2
    assert torch.allclose(norm, latent.distance(a, b), rtol=1e-9, atol=1e-14)


def test_spherical_residual_is_tangent_and_points_to_the_target():
    latent = SphericalLatent()
    a, b = points(16, 8, 8), points(16, 8, 9)
    z_x, z_d = latent.embed(a), latent.embed(b)
    r = latent.residual(a, b)
    assert ((r * z_x).sum(-1)).abs().max() < 1e-12
    s = latent.distance(a, b)[:, None]  # exp map at z_x of the residual lands on z_d
    unit = r / r.norm(dim=-1, keepdim=True)
    assert torch.allclose(torch.cos(s) * z_x + torch.sin(s) * unit, z_d, atol=1e-10)


def test_spherical_values():
    latent = SphericalLatent()
    e1 = torch.tensor([[3.0, 0.0, 0.0]], dtype=F64)
    e2 = torch.tensor([[0.0, 0.5, 0.0]], dtype=F64)
    assert latent.distance(e1, e2).item() == pytest.approx(math.pi / 2, abs=1e-12)
    assert latent.distance(e1, -e1).item() == pytest.approx(math.pi, abs=1e-12)
    a, b = points(32, 5, 10), points(32, 5, 11)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert torch.allclose(latent.distance(a, b), torch.arccos(cos), atol=1e-9)
    tiny = 1e-9  # arccos would give ~1e-8 noise here; the atan2 form stays accurate
    b = a + tiny * torch.nn.functional.normalize(points(32, 5, 12), dim=-1)
    z_a = latent.embed(a)
    chord = (latent.embed(b) - z_a).norm(dim=-1)
    assert torch.allclose(latent.distance(a, b), chord, rtol=1e-6)


@pytest.mark.parametrize("latent", ALL, ids=lambda x: repr(x))
def test_gradients_finite_at_nearly_identical_inputs(latent):
    a = points(8, 16, 13)
    for offset in (0.0, 1e-12, 1e-7):
        x = a.clone().requires_grad_(True)
        y = (a + offset * points(8, 16, 14)).requires_grad_(True)
        for value in (latent.distance(x, y).sum(), latent.residual(x, y).sum()):
            gx, gy = torch.autograd.grad(value, (x, y))
            assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    # float32 too, the dtype training uses
    x = a.float().requires_grad_(True)
    y = (a.float() + 1e-6).requires_grad_(True)
    (gy,) = torch.autograd.grad(latent.distance(x, y).sum() + latent.residual(x, y).sum(), y)
    assert torch.isfinite(gy).all()


@pytest.mark.parametrize("c", [1.0, 0.25])
def test_hyperbolic_distance_closed_forms(c):
    latent = HyperbolicLatent(c=c)
    radii = torch.tensor([-1.5, -0.2, 0.0, 0.4, 1.1], dtype=F64)
    e = torch.zeros(5, 3, dtype=F64)
    e[:, 0] = radii
    other = torch.roll(e, 1, dims=0)
    # On one axis through 0: d(exp_0(r1 e1), exp_0(r2 e1)) = 2 |r1 - r2|.
    expected = 2 * (radii - torch.roll(radii, 1)).abs()
    assert torch.allclose(latent.distance(e, other), expected, atol=1e-9)
    # Anywhere: d = arcosh(1 + 2c|x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))) / sqrt(c).
    a, b = points(64, 4, 15, scale=0.7), points(64, 4, 16, scale=0.7)
    x, y = latent.embed(a), latent.embed(b)
    arg = 1 + 2 * c * ((x - y) ** 2).sum(-1) / ((1 - c * (x**2).sum(-1)) * (1 - c * (y**2).sum(-1)))
    assert torch.allclose(latent.distance(a, b), torch.arccosh(arg) / math.sqrt(c), atol=1e-9)


def test_hyperbolic_points_stay_inside_the_ball():
    latent = HyperbolicLatent(c=2.0)
    x = latent.embed(points(16, 8, 17, scale=100.0).float())
    assert (x.norm(dim=-1) < 1 / math.sqrt(2.0)).all()
    clipped = HyperbolicLatent(c=1.0, clip_norm=1.0)
    big = points(4, 8, 18, scale=100.0)
    assert torch.allclose(
        clipped.embed(big), HyperbolicLatent().embed(big / big.norm(dim=-1, keepdim=True))
    )


@pytest.mark.parametrize("latent", ALL, ids=lambda x: repr(x))
def test_gradients_match_finite_differences(latent):
    a = points(3, 4, 19).requires_grad_(True)
    b = points(3, 4, 20).requires_grad_(True)
    assert torch.autograd.gradcheck(latent.distance, (a, b))
    assert torch.autograd.gradcheck(latent.residual, (a, b))


@pytest.mark.parametrize("rho", [0.3, 1.0, 2.5])
def test_on_one_norm_every_geometry_is_a_function_of_the_angle(rho):
    """Embeddings of one norm ``rho`` (unit-norm image terms times a gain, no encoder part):
    each distance is a known increasing function of the angle between them, so the three
    geometries order poses alike and share their minimiser."""
    g = torch.Generator().manual_seed(21)
    u = torch.randn(64, 8, generator=g, dtype=F64)
    v = torch.randn(64, 8, generator=g, dtype=F64)
    e_x, e_d = rho * u / u.norm(dim=-1, keepdim=True), rho * v / v.norm(dim=-1, keepdim=True)
    cos = (e_x * e_d).sum(-1) / rho**2
    angle = torch.arccos(cos.clamp(-1, 1))
    r = math.tanh(rho)  # |exp_0(e)| on the Poincare ball of curvature -1
    expected = {
        "spherical": angle,
        "euclidean": 2 * rho**2 * (1 - cos),
        "hyperbolic": torch.arccosh(1 + 4 * r**2 * (1 - cos) / (1 - r**2) ** 2),
    }
    order = torch.argsort(angle)
    for name, values in expected.items():
        distance = make_latent(name).distance(e_x, e_d)
        assert torch.allclose(distance, values, rtol=1e-9, atol=1e-10), name
        assert (distance[order].diff() > 0).all(), name
