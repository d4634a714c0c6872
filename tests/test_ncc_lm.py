"""DiffPose's multiscale NCC as a least-squares residual: same objective, exact Jacobian."""

from __future__ import annotations

import math

import torch

from regbench import evaluate
from regbench.geometry.poses import carm_pose, perturb_world
from regbench.methods.ncc_lm import MultiscaleNCCResidual, register_lm_ncc
from regbench.methods.similarity import multiscale_ncc
from regbench.rendering.compiled_projector import FastProjector
from regbench.rendering.diffdrr_adapter import make_drr


def images(seed: int, n: int = 1, size: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 4, size + 4, generator=g), 5, 1)
    return 100 * smooth.double()  # line-integral-like scale: diffdrr's eps is negligible


def test_squared_norm_is_one_minus_diffposes_multiscale_ncc():
    target, moving = images(0), images(1, n=2)
    residual = MultiscaleNCCResidual(target, patch_size=5, border_px=2)
    r, _ = residual(moving)
    score = multiscale_ncc(5, border_px=2)(moving, target.expand(2, -1, -1, -1))
    torch.testing.assert_close((r**2).sum(-1), 1 - score, rtol=0, atol=1e-4)
    r_self, _ = residual(target)
    assert r_self.abs().max() < 1e-12


def test_jacobian_matches_central_differences():
    target, base = images(0), images(2)
    directions = images(3, n=6)[:, 0]  # d image / d xi_k for a linear image model
    jac = directions.reshape(6, -1).T[None]  # (1,H*W,6)
    residual = MultiscaleNCCResidual(target, patch_size=5, border_px=1)
    _, analytic = residual(base, jac)
    h = 1e-6
    for k in range(6):
        plus, _ = residual(base + h * directions[k])
        minus, _ = residual(base - h * directions[k])
        torch.testing.assert_close(analytic[..., k], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-8)


def test_lm_reaches_sub_millimetre_from_a_5_degree_10_mm_start(prepared):
    """DRR-vs-DRR: the target is the projector's own image at the true pose."""
    drr = make_drr(prepared, 1.0)
    projector = FastProjector.from_drr(drr)
    volume = projector.prepare(drr.density)
    n_points = 64
    truth = carm_pose(torch.tensor([[0.03, -0.02, 0.04]]), torch.tensor([[4.0, 840.0, -3.0]]))
    truth = truth.double()
    target = projector(volume, truth, n_points)
    axis = torch.nn.functional.normalize(torch.tensor([[1.0, -2.0, 0.5]]), dim=-1).double()
    shift = torch.nn.functional.normalize(torch.tensor([[-1.0, 0.5, 2.0]]), dim=-1).double()
    xi = torch.cat([axis * math.radians(5.0), shift * 10.0], dim=-1)
    init = perturb_world(truth, xi)[0]
    points = prepared.points
    assert evaluate.mtre(init[None].numpy(), truth.numpy(), points)[0] > 5.0

    result = register_lm_ncc(
        lambda pose: projector.forward_and_jacobian(volume, pose, n_points),
        lambda pose: projector(volume, pose, n_points),
        MultiscaleNCCResidual(target, patch_size=5),
        init,
        max_iterations=40,
        length_mm=100.0,
    )
    final = evaluate.mtre(result.pose[None].numpy(), truth.numpy(), points)[0]
    assert torch.isfinite(result.pose).all() and final < 1.0, final
