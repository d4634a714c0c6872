"""The gather-based feature projector: diffdrr's geometry, exact pose derivatives, double backward."""

from __future__ import annotations

import pytest
import torch
from diffdrr.pose import RigidTransform

from regbench.geometry.poses import carm_pose, se3_exp
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.renderer import Renderer
from regbench.rendering.torch_projector import FeatureProjector

N_POINTS = 24


def poses(*rows: tuple[float, ...]) -> torch.Tensor:
    """C-arm poses from (rx, ry, rz [rad], tx, ty, tz [mm]) rows, float64."""
    p = torch.tensor(rows, dtype=torch.float64)
    return carm_pose(p[:, :3], p[:, 3:])


POSES = poses((0.0, 0.0, 0.0, 0.0, 850.0, 0.0), (0.15, -0.1, 0.2, 12.0, 820.0, -9.0))
# For the default run's geometry: the prior's mean (AP, source 850 mm out), then depth offsets
# of several mm with a few degrees of rotation about every axis.
DEFAULT_POSES = poses(
    (0.0, 0.0, 0.0, 0.0, 850.0, 0.0),
    (0.05, -0.03, 0.02, 3.0, 856.0, -2.0),
    (-0.06, 0.04, 0.05, -4.0, 842.0, 5.0),
)
# Central-difference steps (rad, mm) there: small enough that the differences' own error (from
# the interpolant's kinks at voxel planes) stays well under the 2% tolerance (1e-3 mm: 1.9%).
FD_STEPS = (1e-6, 1e-4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on a shared 2-core machine, threading costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_drr) -> tuple[FeatureProjector, torch.Tensor]:
    """The projector of conftest's tiny DRR and its volume, float64."""
    return FeatureProjector.from_drr(tiny_drr), tiny_drr.density.double()


def central_difference(fn, xi_dim: int = 6, h_rot: float = 1e-8, h_trans: float = 1e-6):
    """Columns d fn(xi) / d xi_k at 0 by central differences (tiny steps: the trilinear
    interpolant has kinks at voxel planes, which larger steps straddle)."""
    cols = []
    for k in range(xi_dim):
        h = h_rot if k < 3 else h_trans
        e = torch.zeros(xi_dim, dtype=torch.float64)
        e[k] = h
        cols.append((fn(e) - fn(-e)) / (2 * h))
    return torch.stack(cols, dim=-1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def pose_derivative_errors(
    projector: FeatureProjector, volume, pose: torch.Tensor, n_points: int
) -> tuple[list[float], list[float]]:
    """Relative errors, against central differences of the rendering (each perturbed pose
    samples over its own alpha range), of the six columns of the analytic Jacobian at ``pose``
    (4,4) and of the six components of the autograd gradient of a least-squares loss."""
    image, jac = projector.forward_and_jacobian(volume, pose, n_points)
    h = torch.tensor([FD_STEPS[0]] * 3 + [FD_STEPS[1]] * 3, dtype=torch.float64)
    steps = torch.diag(h)
    images = projector(volume, pose @ se3_exp(torch.cat([steps, -steps])), n_points)
    target = image.roll((2, -3), (-2, -1)) * 0.9  # generic: no gradient component vanishes

    def loss(rendered: torch.Tensor) -> torch.Tensor:
        return 0.5 * (rendered - target).square().flatten(1).sum(-1)

    fd_columns = (images[:6] - images[6:]).flatten(1) / (2 * h[:, None])  # (6, C*H*W)
    columns = [rel(jac[0, :, k], fd_columns[k]) for k in range(6)]
    losses = loss(images)
    fd_grad = (losses[:6] - losses[6:]) / (2 * h)
    xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(projector(volume, pose @ se3_exp(xi), n_points)), xi)
    return columns, ((grad[0] - fd_grad).abs() / fd_grad.abs()).tolist()


def test_matches_diffdrr_trilinear_on_the_prepared_ct(prepared):
    drr = make_drr(prepared, bone_attenuation=1.0)
    projector = FeatureProjector.from_drr(drr)
    source, targets = drr.detector(RigidTransform(POSES.float()), None)
    rays = projector.rays(POSES)  # float64 here, float32 in diffdrr: compare to 1e-3 mm
    assert (rays[0] - source.double()).abs().max() < 1e-3
    assert (rays[1] - targets.double()).abs().max() < 1e-3
    for n_points in (16, 64):
        reference = Renderer(drr).render(POSES, n_points)
        image = projector(drr.density, POSES, n_points)
        assert image.shape == reference.shape == (2, 1, 32, 32)
        assert rel(image, reference) < 1e-3


def test_channels_and_poses_are_independent(tiny):
    projector, density = tiny
    other = density.flip(0) * 0.5 + 1.0
    both = projector(torch.stack([density, other]), POSES, N_POINTS)
    assert both.shape == (2, 2, 16, 16)
    torch.testing.assert_close(both[:, :1], projector(density, POSES, N_POINTS))
    torch.testing.assert_close(both[:, 1:], projector(other[None], POSES, N_POINTS))
    # Many channels take another code path (one weighted product instead of nested lerps).
    many = projector(torch.stack([other, density, 2 * density, other]), POSES, N_POINTS)
    torch.testing.assert_close(many, torch.cat([both.flip(1), 2 * both[:, :1], both[:, 1:]], 1))
    # One pose at a time gives the same images (each pose samples over its own depth range).
    torch.testing.assert_close(
        both[1:], projector(torch.stack([density, other]), POSES[1:], N_POINTS)
    )
    # One volume per pose, and prepared gather tables of either layout.
    per_pose = torch.stack([density, other])[:, None]
    expected = torch.stack([both[0, 0], both[1, 1]])
    torch.testing.assert_close(projector(per_pose, POSES, N_POINTS)[:, 0], expected)
    for layout in ("quad", "rows"):
        table = projector.prepare(per_pose, layout)
        torch.testing.assert_close(projector(table, POSES, N_POINTS)[:, 0], expected)
        table = projector.prepare(torch.stack([density, other]), layout)
        torch.testing.assert_close(projector(table, POSES, N_POINTS), both)


def test_pose_derivatives_on_the_default_geometry(default_drr):
    """Every column of the Jacobian, depth included, is the derivative of the image computed:
    the per-pose alpha range moves with the pose (ignoring that, depth was 20-40% off)."""
    drr, n_points = default_drr
    projector = FeatureProjector.from_drr(drr)
    volume = projector.prepare(drr.density.double())
    for pose in DEFAULT_POSES[:2]:  # the compiled projector's test covers all, faster
        columns, gradient = pose_derivative_errors(projector, volume, pose, n_points)
        assert max(columns) < 0.02, columns
        assert max(gradient) < 0.02, gradient


@pytest.mark.parametrize("fixed_range", [True, False])
def test_pose_gradient_matches_finite_differences(tiny, fixed_range):
    projector, density = tiny
    pose = POSES[1:]
    span = projector.alpha_range(pose, density.shape) if fixed_range else None
    weights = torch.randn(
        1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    def loss(xi: torch.Tensor) -> torch.Tensor:
        return (projector(density, pose @ se3_exp(xi[None]), N_POINTS, span) * weights).sum()

    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(xi), xi)
    assert rel(grad, central_difference(loss)) < 1e-5
    if fixed_range:  # a range passed in is a constant, even one that requires grad
        span = tuple(a.clone().requires_grad_(True) for a in span)
        assert loss(xi.detach()).grad_fn is None  # (loss reads the new span)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")  # torch's jvp setup
def test_pose_jacobian_matches_finite_differences(tiny):
    projector, density = tiny
    volume = torch.stack([density, density.sqrt()])
    span = projector.alpha_range(POSES, density.shape)

    def images(xi: torch.Tensor, fixed: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        moved = POSES @ se3_exp(xi.expand(2, 6))
        return projector(volume, moved, N_POINTS, fixed).reshape(2, -1)

    image, analytic = projector.forward_and_jacobian(volume, POSES, N_POINTS)
    assert analytic.shape == (2, 2 * 16 * 16, 6)
    torch.testing.assert_close(image, projector(volume, POSES, N_POINTS))
    # The range moves with the pose unless it is passed in; either way the Jacobian is exact.
    assert rel(analytic, central_difference(lambda e: images(e, None))) < 1e-5
    _, fixed = projector.forward_and_jacobian(volume, POSES, N_POINTS, span)
    assert rel(fixed, central_difference(lambda e: images(e, span))) < 1e-5
    assert rel(fixed, analytic) > 1e-3  # the range's term is not negligible
    rows = projector.prepare(volume, "rows")
    torch.testing.assert_close(projector.pose_jacobian(rows, POSES, N_POINTS), analytic)
    forward_mode = projector.pose_jacobian(volume, POSES, N_POINTS, method="forward")
    assert rel(forward_mode, analytic) < 1e-10
    forward_mode = projector.pose_jacobian(volume, POSES, N_POINTS, span, method="forward")
    assert rel(forward_mode, fixed) < 1e-10


@pytest.mark.parametrize("channels, fixed_range", [(1, True), (3, True), (3, False)])
def test_double_backward_through_the_pose_gradient(tiny, channels, fixed_range):
    """Gradient matching differentiates ds/dxi w.r.t. the network: check d/dtheta |ds/dxi|^2
    (with the alpha range fixed, and moving with the pose)."""
    projector, density = tiny
    gains = torch.linspace(1.0, 2.0, channels, dtype=torch.float64)[:, None, None, None]
    pose = POSES[1:]
    span = projector.alpha_range(pose, density.shape) if fixed_range else None
    target = projector(density, POSES[:1], N_POINTS)

    def pose_gradient(theta: torch.Tensor, create_graph: bool) -> torch.Tensor:
        volume = torch.nn.functional.softplus(theta * gains * density / 100)  # a one-weight net
        xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
        image = projector(volume, pose @ se3_exp(xi), N_POINTS, span)
        s = ((image - target) ** 2).mean()
        return torch.autograd.grad(s, xi, create_graph=create_graph)[0]

    def objective(theta: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        g = pose_gradient(theta, create_graph)
        return (g[0, :3] ** 2).sum() + 1e-4 * (g[0, 3:] ** 2).sum()

    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (dtheta,) = torch.autograd.grad(objective(theta, create_graph=True), theta)
    h = 1e-5
    fd = (objective(theta.detach() + h) - objective(theta.detach() - h)) / (2 * h)
    assert torch.isfinite(dtheta) and abs(float(dtheta - fd)) < 1e-5 * abs(float(fd))

    # The analytic Jacobian gives the same pose gradient, and is differentiable too.
    volume = torch.nn.functional.softplus(theta * gains * density / 100)
    image, jac = projector.forward_and_jacobian(volume, pose, N_POINTS, span)
    ds_dimage = 2 * (image - target) / image.numel()
    via_jacobian = (ds_dimage.reshape(1, 1, -1) @ jac)[0]
    torch.testing.assert_close(via_jacobian, pose_gradient(theta, False))
    (d2,) = torch.autograd.grad(via_jacobian.square().sum(), theta)
    assert torch.isfinite(d2)


def test_rejects_bad_inputs(tiny):
    projector, density = tiny
    with pytest.raises(ValueError, match="n_points"):
        projector(density, POSES, 1)
    with pytest.raises(ValueError, match="volumes for"):
        projector(torch.stack([density] * 3)[:, None], POSES, N_POINTS)
    with pytest.raises(ValueError, match="layout"):
        projector.prepare(density, "octets")
    with pytest.raises(ValueError, match="method"):
        projector.pose_jacobian(density, POSES, N_POINTS, method="backward")
