import numpy as np
import pytest
import torch
from diffdrr.pose import se3_exp_map

from regbench.geometry.poses import perturb, se3_exp, se3_log
from regbench.geometry.so4 import (
    se3_distance_sq,
    so4_distance,
    so4_distance_sq,
    so4_embed,
    so4_polar,
    so4_pose_distance,
    target_gradient,
)

L = 500.0
F64 = torch.float64


def random_poses(n: int, seed: int, rot: float = 1.0, trans: float = 300.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(n, 6, generator=g, dtype=F64)
    xi[:, :3] *= rot
    xi[:, 3:] *= trans
    return se3_exp(xi)


def random_so4(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 4, 4, generator=g, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] *= -1
    return q


def test_exp_matches_diffdrr_and_has_finite_gradient_at_zero():
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e-3, 0.0):
        xi = torch.randn(20, 6, generator=g, dtype=F64) * scale
        # diffdrr (PyTorch3D): row-vector layout, (v, omega) order; it clamps tiny angles.
        reference = se3_exp_map(torch.cat([xi[:, 3:], xi[:, :3]], dim=-1)).mT
        assert torch.allclose(se3_exp(xi), reference, atol=1e-9)
    xi = torch.zeros(3, 6, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(se3_exp(xi).sum(), xi)
    assert torch.isfinite(grad).all()
    jac = torch.func.jacfwd(lambda x: se3_exp(x[None])[0])(torch.zeros(6, dtype=F64))
    assert torch.isfinite(jac).all()
    pose = random_poses(4, 1)
    step = torch.randn(4, 6, generator=g, dtype=F64)
    assert torch.allclose(perturb(pose, step), pose @ se3_exp(step), atol=1e-9)


def test_closed_form_embedding_equals_polar_decomposition():
    pose = random_poses(64, 2)
    pose[0] = torch.eye(4, dtype=F64)  # u = 0
    a = pose.clone()
    a[:, :3, 3] /= L
    p = so4_embed(pose, L)
    assert torch.allclose(p, so4_polar(a), atol=1e-6)
    eye = torch.eye(4, dtype=F64)
    assert torch.allclose(p.mT @ p, eye.expand_as(p), atol=1e-12)
    assert torch.allclose(torch.linalg.det(p), torch.ones(64, dtype=F64))


def test_distance_matches_matrix_logarithm_including_large_angles():
    q = random_so4(100, 3)  # about half have tr(Q) < 0
    d = so4_distance(torch.eye(4, dtype=F64).expand_as(q), q).numpy()
    # Eigenvalues exp(+-i theta1), exp(+-i theta2): |log Q|_F^2 / 2 = theta1^2 + theta2^2.
    ref = np.sqrt((np.angle(np.linalg.eigvals(q.numpy())) ** 2).sum(-1) / 2)
    assert np.allclose(d, ref, atol=1e-9)


def test_distance_is_bi_invariant():
    p1 = so4_embed(random_poses(16, 4), L)
    p2 = so4_embed(random_poses(16, 5), L)
    left, right = random_so4(16, 6), random_so4(16, 7)
    d = so4_distance(p1, p2)
    assert torch.allclose(so4_distance(left @ p1, left @ p2), d, atol=1e-9)
    assert torch.allclose(so4_distance(p1 @ right, p2 @ right), d, atol=1e-9)


def test_distance_zero_for_equal_poses_and_symmetric():
    pose_a, pose_b = random_poses(16, 8), random_poses(16, 9)
    assert torch.allclose(so4_pose_distance(pose_a, pose_a, L), torch.zeros(16, dtype=F64))
    assert torch.allclose(
        so4_pose_distance(pose_a, pose_b, L), so4_pose_distance(pose_b, pose_a, L), atol=1e-12
    )
    assert torch.allclose(se3_distance_sq(pose_a, pose_a, L), torch.zeros(16, dtype=F64))
    assert torch.allclose(
        se3_distance_sq(pose_a, pose_b, L), se3_distance_sq(pose_b, pose_a, L), atol=1e-12
    )


def test_small_motion_distance_is_angle_and_half_scaled_translation():
    # Holds near t = 0; the embedding shrinks translations by up to 1/(1 + |t/L|^2 / 4) far out.
    g = torch.Generator().manual_seed(10)
    base = random_poses(8, 11, trans=0.0)
    direction = torch.randn(8, 6, generator=g, dtype=F64)
    direction[:, 3:] *= L
    ratios = []
    for size in (1e-1, 1e-2, 1e-3, 1e-4):
        xi = direction * size
        moved = perturb(base, xi)
        approx = torch.sqrt(
            (xi[:, :3] ** 2).sum(-1) + ((moved - base)[:, :3, 3] ** 2).sum(-1) / (2 * L) ** 2
        )
        ratios.append((so4_pose_distance(base, moved, L) / approx - 1).abs().max().item())
    assert ratios[-1] < 1e-6
    assert all(b < a for a, b in zip(ratios, ratios[1:], strict=False))


def test_squared_distances_have_finite_gradients_at_zero():
    pose = random_poses(4, 12).requires_grad_(True)
    for d_sq in (
        so4_distance_sq(so4_embed(pose, L), so4_embed(pose.detach(), L)),
        se3_distance_sq(pose, pose.detach(), L),
    ):
        (grad,) = torch.autograd.grad(d_sq.sum(), pose)
        assert torch.isfinite(grad).all()
        assert grad.abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["se3", "so4"])
def test_target_gradient_matches_finite_differences(kind):
    pose, pose_gt = random_poses(3, 13, rot=0.3, trans=100.0), random_poses(3, 14, 0.3, 100.0)

    def half_sq(xi: torch.Tensor) -> torch.Tensor:
        moved = perturb(pose, xi)
        if kind == "se3":
            return 0.5 * se3_distance_sq(moved, pose_gt, L)
        return 0.5 * so4_distance_sq(so4_embed(moved, L), so4_embed(pose_gt, L))

    grad = target_gradient(pose, pose_gt, L, kind)
    fd = torch.zeros_like(grad)
    for k in range(6):
        step = torch.zeros(3, 6, dtype=F64)
        step[:, k] = 1e-5 if k < 3 else 1e-3
        fd[:, k] = (half_sq(step) - half_sq(-step)) / (2 * step[:, k])
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-9)


def test_se3_target_rotation_part_is_relative_rotation_log():
    pose, pose_gt = random_poses(4, 15, rot=0.5), random_poses(4, 16, rot=0.5)
    grad = target_gradient(pose, pose_gt, L, "se3")
    rel = torch.linalg.inv(pose_gt) @ pose
    rel[:, :3, 3] = 0
    assert torch.allclose(grad[:, :3], se3_log(rel)[:, :3], atol=1e-9)
    expected_v = (pose[:, :3, :3].mT @ (pose - pose_gt)[:, :3, 3:4])[..., 0] / L**2
    assert torch.allclose(grad[:, 3:], expected_v, atol=1e-12)


@pytest.mark.parametrize("kind", ["se3", "so4"])
def test_target_gradient_points_downhill(kind):
    pose, pose_gt = random_poses(16, 17, rot=0.5), random_poses(16, 18, rot=0.5)
    grad = target_gradient(pose, pose_gt, L, kind)
    assert target_gradient(pose_gt, pose_gt, L, kind).abs().max() < 1e-12

    def dist_sq(p: torch.Tensor) -> torch.Tensor:
        if kind == "se3":
            return se3_distance_sq(p, pose_gt, L)
        return so4_distance_sq(so4_embed(p, L), so4_embed(pose_gt, L))

    stepped = perturb(pose, -1e-3 * grad / grad.norm(dim=-1, keepdim=True))
    assert (dist_sq(stepped) < dist_sq(pose)).all()
