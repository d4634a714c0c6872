"""The numba projector renders what the torch FeatureProjector renders: images, Jacobians, pose
and volume gradients agree (to rounding in float64, to 1e-5 in float32), and so does diffdrr."""

from __future__ import annotations

import math

import pytest
import torch
from test_projector import (
    DEFAULT_POSES,
    N_POINTS,
    POSES,
    central_difference,
    pose_derivative_errors,
    poses,
    rel,
)

from regbench.geometry.poses import se3_exp
from regbench.rendering.compiled_projector import FastProjector, FastVolume
from regbench.rendering.renderer import Renderer
from regbench.rendering.torch_projector import FeatureProjector

# A third pose whose rays partly miss the volume: per-ray clipping must skip zeros only.
MORE = torch.cat([POSES, poses((0.4, 0.3, -0.2, 70.0, 900.0, 30.0))])
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(scope="module")
def projectors(tiny_drr) -> tuple[FeatureProjector, FastProjector, torch.Tensor]:
    return (
        FeatureProjector.from_drr(tiny_drr),
        FastProjector.from_drr(tiny_drr),
        tiny_drr.density.double(),
    )


def channels_of(density: torch.Tensor, channels: int) -> torch.Tensor:
    """(X,Y,Z) for one channel, else (C,X,Y,Z) of different positive volumes."""
    if channels == 1:
        return density
    return torch.stack([density, density.flip(0) * 0.5 + 1.0, density.sqrt()][:channels])


@pytest.mark.parametrize("channels", [1, 3])
def test_images_match_the_feature_projector(projectors, channels):
    reference, fast, density = projectors
    volume = channels_of(density, channels)
    for n_points in (2, 7, N_POINTS):
        expected = reference(volume, MORE, n_points)
        assert expected.shape == (3, channels, 16, 16)
        torch.testing.assert_close(fast(volume, MORE, n_points), expected, **EXACT)
        single = fast(volume.float(), MORE.float(), n_points)  # float32 kernel
        assert single.dtype == torch.float32
        assert rel(single.double(), expected) < 1e-5
    # A prepared volume is a copy, reused as is; one pose at a time gives the same images.
    copy = volume.clone()
    prepared = fast.prepare(copy)
    assert isinstance(prepared, FastVolume)
    assert (prepared.batch, prepared.channels, prepared.shape) == (1, channels, (10, 12, 9))
    copy.zero_()
    images = fast(prepared, MORE, N_POINTS)
    torch.testing.assert_close(images, reference(volume, MORE, N_POINTS), **EXACT)
    torch.testing.assert_close(fast(prepared, MORE[1:2], N_POINTS), images[1:2], **EXACT)
    # One volume per pose.
    per_pose = torch.stack([volume, volume.flip(-1), 2 * volume]).reshape(3, channels, 10, 12, 9)
    torch.testing.assert_close(
        fast(per_pose, MORE, N_POINTS), reference(per_pose, MORE, N_POINTS), **EXACT
    )


def test_every_memory_layout(projectors):
    """Rays mostly along x, y or z each use the volume laid out with that axis contiguous."""
    reference, fast, density = projectors
    volume = channels_of(density, 2)
    prepared = fast.prepare(volume)
    along = poses(
        (math.pi / 2 + 0.1, 0.05, 0.0, 10.0, 850.0, 0.0),  # x
        (0.1, -0.05, 0.1, 5.0, 850.0, -10.0),  # y
        (0.1, math.pi / 2 - 0.1, 0.0, 0.0, 850.0, 5.0),  # z
    )
    for pose in along:
        image, jac = fast.forward_and_jacobian(prepared, pose, N_POINTS)
        expected_image, expected = reference.forward_and_jacobian(volume, pose, N_POINTS)
        torch.testing.assert_close(image, expected_image, **EXACT)
        torch.testing.assert_close(jac, expected, **EXACT)
    assert sorted(prepared._layouts) == [0, 1, 2]
    per_pose = torch.stack([volume, 2 * volume, volume.flip(1)])  # and one volume per pose
    torch.testing.assert_close(
        fast(per_pose, along[[0, 0, 0]], N_POINTS),
        reference(per_pose, along[[0, 0, 0]], N_POINTS),
        **EXACT,
    )


def test_jacobian_matches_the_feature_projector(projectors):
    reference, fast, density = projectors
    volume = channels_of(density, 2)
    image, jac = fast.forward_and_jacobian(volume, MORE, N_POINTS)
    expected_image, expected = reference.forward_and_jacobian(volume, MORE, N_POINTS)
    assert jac.shape == (3, 2 * 16 * 16, 6)
    torch.testing.assert_close(image, expected_image, **EXACT)
    torch.testing.assert_close(jac, expected, **EXACT)
    torch.testing.assert_close(fast.pose_jacobian(volume, MORE, N_POINTS), expected, **EXACT)
    _, single = fast.forward_and_jacobian(fast.prepare(volume.float()), MORE.float(), N_POINTS)
    assert single.dtype == torch.float32
    assert rel(single.double(), expected) < 1e-5


@pytest.mark.parametrize("channels, fixed_range", [(1, True), (3, True), (3, False)])
def test_pose_gradient_through_autograd(projectors, channels, fixed_range):
    reference, fast, density = projectors
    volume = fast.prepare(channels_of(density, channels))
    span = reference.alpha_range(MORE, density.shape) if fixed_range else None
    weights = torch.randn(
        3, channels, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    def loss(projector, vol, xi: torch.Tensor) -> torch.Tensor:
        moved = MORE @ se3_exp(xi.expand(3, 6))
        return (projector(vol, moved, N_POINTS, span) * weights).sum()

    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(fast, volume, xi), xi)
    (expected,) = torch.autograd.grad(loss(reference, channels_of(density, channels), xi), xi)
    torch.testing.assert_close(grad, expected, **EXACT)
    assert rel(grad, central_difference(lambda e: loss(fast, volume, e))) < 1e-5

    # Gradient w.r.t. the (N,4,4) poses themselves, in float32 too.
    for dtype in (torch.float64, torch.float32):
        grads = []
        for projector in (fast, reference):
            vol = channels_of(density, channels).to(dtype)
            pose = MORE.to(dtype, copy=True).requires_grad_(True)
            (projector(vol, pose, N_POINTS) * weights.to(dtype)).sum().backward()
            grads.append(pose.grad.double())
        assert rel(*grads) < (1e-10 if dtype == torch.float64 else 1e-4)


def test_pose_derivatives_on_the_default_geometry(default_drr):
    """As for FeatureProjector: the kernel's moment sums carry the alpha range's term too."""
    drr, n_points = default_drr
    fast = FastProjector.from_drr(drr)
    volume = fast.prepare(drr.density.double())
    for pose in DEFAULT_POSES:
        columns, gradient = pose_derivative_errors(fast, volume, pose, n_points)
        assert max(columns) < 0.02, columns
        assert max(gradient) < 0.02, gradient


def test_matches_diffdrr(tiny_drr, projectors):
    _, fast, _ = projectors
    for n_points in (16, 64):
        expected = Renderer(tiny_drr).render(POSES, n_points)
        image = fast(tiny_drr.density, POSES, n_points)
        assert image.shape == expected.shape == (2, 1, 16, 16)
        assert rel(image, expected) < 1e-3


@pytest.mark.parametrize("channels, per_pose", [(1, False), (3, False), (2, True)])
def test_volume_gradient_matches_the_feature_projector(projectors, channels, per_pose):
    """The adjoint kernel: d(sum w * image)/d volume as the torch projector's autograd gives
    it, with a pose gradient wanted at the same time and without; float32 too."""
    reference, fast, density = projectors
    base = channels_of(density, channels).reshape(1, channels, 10, 12, 9)
    if per_pose:
        base = torch.cat([base, base.flip(-1), 2 * base])
    weights = torch.randn(
        3, channels, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for pose_grad in (False, True):
            results = []
            for projector in (fast, reference):
                volume = base.to(dtype).clone().requires_grad_(True)
                pose = MORE.to(dtype, copy=True).requires_grad_(pose_grad)
                loss = (projector(volume, pose, N_POINTS) * weights.to(dtype)).sum()
                wrt = (volume, pose) if pose_grad else (volume,)
                results.append([g.double() for g in torch.autograd.grad(loss, wrt)])
            for got, expected in zip(*results, strict=True):
                assert rel(got, expected) < tol
    # Linear in the volume: the gradient of sum(w * image) is w's back-projection, so
    # <gradient, volume> equals the loss itself.
    volume = base.clone().requires_grad_(True)
    loss = (fast(volume, MORE, N_POINTS) * weights).sum()
    (grad,) = torch.autograd.grad(loss, volume)
    torch.testing.assert_close((grad * base).sum(), loss.detach(), **EXACT)


def test_rejects_what_it_cannot_do(projectors):
    reference, fast, density = projectors
    learned = density.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="requires grad"):
        fast.prepare(learned)  # a prepared volume is a constant
    with torch.no_grad():  # no gradient wanted: a volume that requires grad is fine
        torch.testing.assert_close(fast(learned, POSES, N_POINTS), fast(density, POSES, N_POINTS))
    with pytest.raises(ValueError, match="FastVolume"):
        fast(reference.prepare(density), POSES, N_POINTS)
    with pytest.raises(ValueError, match="float32 or float64"):
        fast(density.half(), POSES, N_POINTS)
    with pytest.raises(ValueError, match="non-finite"):
        fast(density, POSES * float("nan"), N_POINTS)
    with pytest.raises(ValueError, match="n_points"):
        fast(density, POSES, 1)
    with pytest.raises(ValueError, match="volumes for"):
        fast(torch.stack([density] * 3)[:, None], POSES, N_POINTS)
    with pytest.raises(ValueError, match="forward-mode"):
        fast.pose_jacobian(density, POSES, N_POINTS, method="forward")
    pose = POSES.clone().requires_grad_(True)
    image = fast(density, pose, N_POINTS)
    (grad,) = torch.autograd.grad(image.square().sum(), pose, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
