import math

import pytest
import torch

from regbench.geometry.poses import hat, perturb, relative, se3_exp, se3_log
from regbench.optim.lm import levenberg_marquardt, pose_residual

F64 = torch.float64
L = 500.0
SCALE = torch.tensor([L, L, L, 1.0, 1.0, 1.0], dtype=F64)


def problem(n: int, seed: int, degrees: float = 20.0, mm: float = 50.0):
    """Random true poses, camera-frame points, their world images, and a start off by
    ``degrees`` / ``mm``."""
    g = torch.Generator().manual_seed(seed)
    xi_true = torch.randn(n, 6, generator=g, dtype=F64)
    xi_true[:, 3:] *= 200.0
    truth = se3_exp(xi_true)
    pts = torch.randn(n, 12, 3, generator=g, dtype=F64) * 80.0
    targets = pts @ truth[:, :3, :3].mT + truth[:, None, :3, 3]
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=F64), dim=-1)
    shift = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=F64), dim=-1)
    off = torch.cat([axis * math.radians(degrees), shift * mm], dim=-1)
    start = perturb(truth, off)
    return truth, pts, targets, start


def point_residual(pts: torch.Tensor, targets: torch.Tensor):
    def residual(pose: torch.Tensor) -> torch.Tensor:
        moved = pts @ pose[:, :3, :3].mT + pose[:, None, :3, 3]
        return (moved - targets).flatten(1)

    return residual


def pose_error(pose: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation angle [rad], translation [mm]) of truth^-1 pose."""
    rel = relative(truth, pose)
    cos = ((torch.diagonal(rel[:, :3, :3], dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.arccos(cos), rel[:, :3, 3].norm(dim=-1)


@pytest.mark.parametrize("mode", ["autograd", "forward", "finite", "callable"])
def test_recovers_pose_from_point_correspondences(mode):
    truth, pts, targets, start = problem(4, 0)
    residual = point_residual(pts, targets)
    jacobian = mode
    if mode == "callable":  # analytic: d(R(I + w^) p + t + R v)/d(w, v) = [-R p^, R]

        def jacobian(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rot = pose[:, None, :3, :3]
            d_omega = -rot @ hat(pts)
            d_v = rot.expand(-1, pts.shape[1], -1, -1)
            jac = torch.cat([d_omega, d_v], dim=-1).flatten(1, 2)
            return residual(pose), jac

    result = levenberg_marquardt(
        pose_residual(residual), start, jacobian=jacobian, scale=SCALE, max_iterations=30
    )
    angle, dist = pose_error(result.pose, truth)
    assert angle.max() < 1e-4 and dist.max() < 1e-4
    assert result.converged.all()
    assert set(result.stop_reason) <= {"step", "cost"}
    assert result.iterations.max() <= 10
    assert torch.allclose(perturb(start, result.xi), result.pose, atol=1e-8)
    assert (result.cost_history[-1] <= result.cost_history[0]).all()


def test_unbatched_input_gives_unbatched_output():
    truth, pts, targets, start = problem(1, 1)
    result = levenberg_marquardt(pose_residual(point_residual(pts, targets)), start[0])
    assert result.pose.shape == (4, 4) and result.xi.shape == (6,)
    assert result.cost_history.dim() == 1 and bool(result.converged)


def test_non_finite_trial_steps_are_rejected_and_never_returned():
    truth, pts, targets, start = problem(3, 2)
    residual = point_residual(pts, targets)

    def residual_at(pose: torch.Tensor, dxi: torch.Tensor) -> torch.Tensor:
        # Steps longer than 60 mm (rotations as arc length at L) leave the valid region.
        too_far = (dxi * SCALE).norm(dim=-1, keepdim=True) > 60.0
        r = residual(perturb(pose, dxi))
        return torch.where(too_far, torch.full_like(r, math.nan), r)

    result = levenberg_marquardt(residual_at, start, scale=SCALE, max_iterations=40)
    for value in (result.pose, result.xi, result.cost, result.cost_history, result.lambdas):
        assert torch.isfinite(value).all()
    assert result.converged.all()
    angle, dist = pose_error(result.pose, truth)
    assert angle.max() < 1e-4 and dist.max() < 1e-4
    assert (result.lambdas[1] > result.lambdas[0]).all()  # the first, full step was refused


def test_damping_decreases_on_a_quadratic_problem():
    # Pure translation residual: rotation columns vanish, so the model is exactly quadratic,
    # rho = 1 and Nielsen's rule divides lambda by 3 at every step.
    target = torch.tensor([[30.0, -20.0, 10.0]], dtype=F64)

    def residual(pose: torch.Tensor) -> torch.Tensor:
        return pose[:, :3, 3] - target

    start = torch.eye(4, dtype=F64)[None]
    result = levenberg_marquardt(pose_residual(residual), start, lambda0=1.0, max_iterations=6)
    lambdas = result.lambdas[:, 0]
    assert torch.allclose(lambdas[1:], lambdas[:-1] / 3, rtol=1e-6)
    assert (result.cost_history[1:, 0] < result.cost_history[:-1, 0]).all()


def test_differentiable_steps_give_gradients_matching_finite_differences():
    truth, pts, targets, start = problem(2, 3, degrees=10.0, mm=20.0)
    weights = torch.randn(2, 6, generator=torch.Generator().manual_seed(4), dtype=F64)

    def final_xi(shift: torch.Tensor, differentiable: bool) -> torch.Tensor:
        residual = point_residual(pts, targets + shift)
        return levenberg_marquardt(
            pose_residual(residual),
            start,
            scale=SCALE,
            max_iterations=4,
            step_tol=0.0,
            cost_tol=0.0,
            differentiable=differentiable,
        ).xi

    shift = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad((final_xi(shift, True) * weights).sum(), shift)
    assert not final_xi(shift, False).requires_grad
    fd = torch.zeros(3, dtype=F64)
    for k in range(3):
        step = torch.zeros(3, dtype=F64)
        step[k] = 1e-5
        with torch.no_grad():
            plus = (final_xi(shift + step, False) * weights).sum()
            minus = (final_xi(shift - step, False) * weights).sum()
        fd[k] = (plus - minus) / 2e-5
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_callback_can_stop_and_bad_start_is_reported():
    truth, pts, targets, start = problem(2, 5)
    seen = []

    def stop_after_two(iteration, pose, cost, lam):
        seen.append(iteration)
        return iteration == 1

    residual_at = pose_residual(point_residual(pts, targets))
    result = levenberg_marquardt(residual_at, start, callback=stop_after_two)
    assert seen == [0, 1] and result.stop_reason == ["callback", "callback"]
    assert not result.converged.any()

    bad = start.clone()
    bad[1, 0, 3] = math.nan
    result = levenberg_marquardt(residual_at, bad)
    assert result.stop_reason[1] == "non_finite" and not bool(result.converged[1])
    assert bool(result.converged[0])
    assert se3_log(relative(start[:1], result.pose[:1])).abs().max() > 0


def test_unrolled_gradient_at_the_optimum_is_the_sensitivity_of_the_optimum():
    # Started at the solution, the optimum still moves with the targets: xi* = shift (in the
    # camera frame, rotation part 0) when every target moves by R shift.
    truth, pts, targets, _ = problem(1, 6)
    shift = torch.zeros(3, dtype=F64, requires_grad=True)
    moved = targets + shift @ truth[0, :3, :3].mT
    result = levenberg_marquardt(
        pose_residual(point_residual(pts, moved)), truth, lambda0=1e-9, differentiable=True
    )  # (with lambda0 = 1e-3 the one damped step gives 1 / (1 + lambda) of it)
    jac = torch.stack(
        [torch.autograd.grad(result.xi[0, k], shift, retain_graph=True)[0] for k in range(6)]
    )
    expected = torch.cat([torch.zeros(3, 3, dtype=F64), torch.eye(3, dtype=F64)])
    assert torch.allclose(jac, expected, atol=1e-6)
