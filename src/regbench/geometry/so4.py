"""Pose distances and the gradient targets of similarity training.

Conventions (see :mod:`regbench.geometry.poses`): a pose is a 4x4 camera-to-world matrix in mm,
``[[R, t], [0, 1]]``; an increment ``xi = (omega [rad], v [mm])`` acts by right perturbation,
``T(xi) = T @ exp(xi)``. ``L`` [mm] is the characteristic length that makes translation
commensurable with rotation.

* :func:`so4_embed` maps SE(3) into SO(4) (the polar factor of ``[[R, t/L], [0, 1]]``), where the
  bi-invariant metric gives :func:`so4_distance` (radians).
* :func:`se3_distance_sq` is the product-metric distance on SO(3) x R^3, in rad^2:
  ``theta(R_a^T R_b)^2 + (|t_a - t_b| / L)^2``.
* :func:`target_gradient` is ``d/dxi 1/2 d(T(xi), T_gt)^2`` at ``xi = 0`` for either distance.

Every squared distance here has finite gradients everywhere off the cut locus (rotations by
pi), including at zero distance; the unsquared distances do not at zero (like ``|x|``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from regbench.geometry.poses import perturb

TargetKind = Literal["se3", "so4"]


# --------------------------------------------------------------------------- SO(4) embedding
def so4_embed(pose: torch.Tensor, L: float) -> torch.Tensor:
    """(N,4,4) poses -> (N,4,4) SO(4) matrices: the polar factor of ``[[R, t/L], [0, 1]]``.

    Closed form (checked against :func:`so4_polar`): with ``u = R^T t / L`` and
    ``s = sqrt(4 + |u|^2)``,
    ``P = diag(R, 1) @ G``, ``G = [[I - u u^T / (s (s + 2)), u / s], [-u^T / s, 2 / s]]``.
    ``G`` rotates the plane spanned by ``(u/|u|, e4)`` by ``phi = arctan(|u| / 2)``, taking
    ``e4`` towards ``+u/|u|`` (``G e4 = cos(phi) e4 + sin(phi) u/|u|``); it is the identity for
    ``u = 0``. Written without ``1/|u|`` so it is smooth at ``t = 0``.
    """
    pose = pose.unsqueeze(0) if pose.dim() == 2 else pose
    rot, t = pose[..., :3, :3], pose[..., :3, 3] / L
    u = (rot.mT @ t[..., None])[..., 0]
    s = torch.sqrt(4 + (u * u).sum(-1))[..., None]
    top_left = rot - t[..., :, None] * u[..., None, :] / (s * (s + 2))[..., None]
    top = torch.cat([top_left, (t / s)[..., None]], dim=-1)
    bottom = torch.cat([-u / s, 2 / s], dim=-1)[..., None, :]
    return torch.cat([top, bottom], dim=-2)


def so4_polar(matrix: torch.Tensor) -> torch.Tensor:
    """Reference polar factor ``U V^T`` of (N,4,4) matrices with positive determinant (SVD)."""
    u, _, vh = torch.linalg.svd(matrix)
    return u @ vh


def so4_distance_sq(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Squared bi-invariant distance ``|log(P1^T P2)|_F^2 / 2 = theta1^2 + theta2^2`` -> (N,).

    Computed without eigenvalues (which are degenerate at zero distance): ``Q = P1^T P2`` splits
    into commuting isoclinic rotations with angles ``sigma = (theta1 + theta2)/2`` and
    ``delta = (theta1 - theta2)/2``; from ``c = tr(Q)/4 = cos(sigma) cos(delta)`` and the
    self-dual / anti-self-dual halves of ``S = (Q - Q^T)/2`` (norms ``2|sin(sigma) cos(delta)|``
    and ``2|cos(sigma) sin(delta)|``), ``|sigma|`` and ``|delta|`` follow by atan2, and
    ``d^2 = 2 (sigma^2 + delta^2)``. Gradients are finite at zero distance.
    """
    q = p1.mT @ p2
    c = (q[..., 0, 0] + q[..., 1, 1] + q[..., 2, 2] + q[..., 3, 3]) / 4
    s = (q - q.mT) / 2
    plus = torch.stack(
        [s[..., 0, 1] + s[..., 2, 3], s[..., 0, 2] - s[..., 1, 3], s[..., 0, 3] + s[..., 1, 2]],
        dim=-1,
    )
    minus = torch.stack(
        [s[..., 0, 1] - s[..., 2, 3], s[..., 0, 2] + s[..., 1, 3], s[..., 0, 3] - s[..., 1, 2]],
        dim=-1,
    )
    x_sq = (plus * plus).sum(-1) / 4  # sin^2(sigma) cos^2(delta)
    y_sq = (minus * minus).sum(-1) / 4  # cos^2(sigma) sin^2(delta)
    abs_c = c.abs()
    p_sq = atan2_sq(x_sq, abs_c)  # the smaller isoclinic angle candidates, in [0, pi/2]
    q_sq = atan2_sq(y_sq, abs_c)
    near = 2 * (p_sq + q_sq)
    # c < 0: one isoclinic angle exceeds pi/2; the principal logarithm takes the cheaper one.
    p_big = torch.sqrt(torch.maximum(p_sq, q_sq).clamp_min(torch.finfo(c.dtype).tiny))
    far = 2 * (p_sq + q_sq + math.pi**2 - 2 * math.pi * p_big)
    return torch.where(c >= 0, near, far)


def so4_distance(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Bi-invariant distance ``sqrt(theta1^2 + theta2^2)`` [rad] -> (N,); use the squared
    version where gradients at zero distance matter."""
    d_sq = so4_distance_sq(p1, p2)
    safe = d_sq.clamp_min(torch.finfo(d_sq.dtype).tiny)
    return torch.where(d_sq > 0, torch.sqrt(safe), torch.zeros_like(d_sq))


def so4_pose_distance(pose_a: torch.Tensor, pose_b: torch.Tensor, L: float) -> torch.Tensor:
    """SO(4) distance [rad] between two (N,4,4) poses, embedded with length ``L`` [mm]."""
    return so4_distance(so4_embed(pose_a, L), so4_embed(pose_b, L))


# --------------------------------------------------------------------------- se(3) distance
def rotation_angle_sq(rot: torch.Tensor) -> torch.Tensor:
    """Squared rotation angle [rad^2] of (N,3,3) rotations, finite gradients at the identity."""
    cos = (rot[..., 0, 0] + rot[..., 1, 1] + rot[..., 2, 2] - 1) / 2
    skew = (rot - rot.mT) / 2
    sin_vec = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1)
    return atan2_sq((sin_vec * sin_vec).sum(-1), cos)


def se3_distance_sq(pose_a: torch.Tensor, pose_b: torch.Tensor, L: float) -> torch.Tensor:
    """Product-metric squared distance [rad^2] ``theta(R_a^T R_b)^2 + (|t_a - t_b| / L)^2``.

    This is ``(L theta)^2 + |t_a - t_b|^2`` (rotation scaled by L, translation) over ``L^2`` (same
    gradient directions), so it shares the units of :func:`so4_distance_sq`. ``t`` is the
    camera position in the world (camera-to-world poses), so ``|t_a - t_b|`` is in mm.
    """
    pose_a = pose_a.unsqueeze(0) if pose_a.dim() == 2 else pose_a
    pose_b = pose_b.unsqueeze(0) if pose_b.dim() == 2 else pose_b
    angle_sq = rotation_angle_sq(pose_a[..., :3, :3].mT @ pose_b[..., :3, :3])
    dt = (pose_a[..., :3, 3] - pose_b[..., :3, 3]) / L
    return angle_sq + (dt * dt).sum(-1)


# --------------------------------------------------------------------------- training targets
def target_gradient(
    pose: torch.Tensor, pose_gt: torch.Tensor, L: float, kind: TargetKind
) -> torch.Tensor:
    """``d/dxi 1/2 d(pose @ exp(xi), pose_gt)^2`` at ``xi = 0`` -> (N,6), order (omega, v).

    ``kind="se3"``: ``d^2 =`` :func:`se3_distance_sq`; ``kind="so4"``: ``d^2 =``
    :func:`so4_distance_sq` of the embeddings. Units: rad for the omega part, 1/mm for v.
    Computed in float64 by autograd, returned detached in the dtype of ``pose``.
    A step along ``-g`` moves ``pose`` towards ``pose_gt``.
    """
    pose = pose.unsqueeze(0) if pose.dim() == 2 else pose
    pose_gt = pose_gt.unsqueeze(0) if pose_gt.dim() == 2 else pose_gt
    base, gt = pose.detach().double(), pose_gt.detach().double()
    with torch.enable_grad():
        xi = torch.zeros(base.shape[0], 6, dtype=torch.float64, device=base.device)
        xi.requires_grad_(True)
        moved = perturb(base, xi)
        if kind == "se3":
            d_sq = se3_distance_sq(moved, gt, L)
        elif kind == "so4":
            d_sq = so4_distance_sq(so4_embed(moved, L), so4_embed(gt, L))
        else:
            raise ValueError(f"unknown target kind {kind!r}; expected 'se3' or 'so4'")
        (grad,) = torch.autograd.grad(0.5 * d_sq.sum(), xi)
    return grad.to(pose.dtype)


# --------------------------------------------------------------------------- helpers
def atan2_sq(y_sq: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(sqrt(y_sq), x)^2`` for ``y_sq >= 0`` with finite gradients at ``y_sq = 0``.

    Why: ``sqrt`` has an infinite derivative at 0; for ``x > 0`` and small ratios the series
    ``r^2 - 2 r^4 / 3`` (``r^2 = y_sq / x^2``) is used instead, which is smooth in ``y_sq``.
    """
    tiny = torch.finfo(y_sq.dtype).tiny
    series = (x > 0) & (y_sq < 1e-6 * x * x)
    x_safe = torch.where(series, x, torch.ones_like(x))
    r_sq = y_sq / (x_safe * x_safe)
    direct = torch.atan2(torch.sqrt(y_sq.clamp_min(tiny)), x) ** 2
    return torch.where(series, r_sq - 2 * r_sq * r_sq / 3, direct)
