"""Batched, optionally differentiable Levenberg-Marquardt over rigid poses.

The state is a pose (N,4,4, camera-to-world, mm). Each iteration linearises the caller's
residual at the current pose in the increment ``dxi = (omega [rad], v [mm])`` at ``dxi = 0``
(right perturbation, ``pose @ exp(dxi)``), solves

    (J^T J + lambda D) h = -J^T r,   D = diag(J^T J)   (Marquardt's scaling)

and, if the gain ratio ``rho`` (actual / predicted decrease of ``1/2 |r|^2``) is positive, moves
to ``pose @ exp(h)``. Damping follows Nielsen (1999): accept -> ``lambda *= max(1/3,
1 - (2 rho - 1)^3)``, ``nu = 2``; reject -> ``lambda *= nu``, ``nu *= 2``. Trial steps whose cost is
not finite are rejected, so a NaN never enters the state. Problems in the batch are independent
(own damping, own stopping); stopping happens on a small step, a flat cost or the iteration cap.

``scale`` (6,) expresses increments in commensurable units, ``y = scale * dxi``; e.g.
``(L, L, L, 1, 1, 1)`` turns a rotation into an arc length in mm at radius ``L``. Marquardt's
``D`` makes the step itself independent of ``scale``; it sets the units of ``step_tol`` and of the
finite-difference step, and the floor that keeps ``D`` invertible for flat directions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from regbench.geometry.poses import perturb, relative, se3_log

ResidualAt = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``residual_at(pose (N,4,4), dxi (N,6)) -> (N,M)``: residual at ``pose @ exp(dxi)``."""

JacobianFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``jacobian(pose (N,4,4)) -> (r (N,M), J (N,M,6))``, ``J = dr/d(dxi)`` at ``dxi = 0``."""

JacobianMode = Literal["autograd", "reverse", "forward", "finite"]

MAX_LAMBDA = 1e16


@dataclass
class LMResult:
    """Outcome per problem; unbatched ``pose0`` gives unbatched fields (history: (K+1,)).

    ``xi`` is the total increment, ``pose = pose0 @ exp(xi)``. ``cost`` is ``1/2 |r|^2``.
    ``cost_history[k]`` / ``lambdas[k]`` hold the state after iteration ``k`` (row 0: start).
    ``stop_reason``: "step", "cost" (converged), "max_iterations", "damping" (lambda blew up),
    "non_finite" (residual or Jacobian at the current pose not finite), "callback".
    """

    pose: torch.Tensor
    xi: torch.Tensor
    cost: torch.Tensor
    cost_history: torch.Tensor
    lambdas: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    stop_reason: list[str]


def pose_residual(residual: Callable[[torch.Tensor], torch.Tensor]) -> ResidualAt:
    """Adapt ``residual(pose (N,4,4)) -> (N,M)`` to :data:`ResidualAt` (finite-gradient exp, so
    autograd Jacobians at ``dxi = 0`` are finite)."""

    def residual_at(pose: torch.Tensor, dxi: torch.Tensor) -> torch.Tensor:
        return residual(perturb(pose, dxi))

    return residual_at


def levenberg_marquardt(
    residual_at: ResidualAt,
    pose0: torch.Tensor,
    *,
    jacobian: JacobianMode | JacobianFn = "autograd",
    max_iterations: int = 20,
    lambda0: float = 1e-3,
    scale: torch.Tensor | None = None,
    step_tol: float = 1e-6,
    cost_tol: float = 1e-10,
    fd_step: float = 1e-3,
    differentiable: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], bool | None] | None = None,
) -> LMResult:
    """Minimise ``1/2 |residual_at(pose, 0)|^2`` over poses, starting at ``pose0`` ((4,4) or
    (N,4,4)).

    jacobian: "autograd" / "reverse" (``torch.func`` reverse mode: M vector-Jacobian products,
        works through any op with a backward, e.g. ``grid_sample``), "forward" (``jacfwd``:
        6 Jacobian-vector products, cheapest when M >> 6 and every op has forward-mode AD),
        "finite" (central differences, 12 residual calls, step ``fd_step / scale``), or a
        :data:`JacobianFn` (e.g. a renderer's per-ray Jacobian).
    step_tol: converged when ``|scale * h| <= step_tol``; that last step is still taken unless
        it raises the cost, so an unrolled run at the optimum still depends on the residual.
    cost_tol: converged when an accepted step lowers the cost by at most ``cost_tol * cost``.
    differentiable: keep the autograd graph through every step (for unrolled training);
        otherwise the loop runs under ``no_grad`` and the result is detached.
    callback: ``callback(iteration, pose, cost, lambda)`` after each iteration; returning
        True stops the remaining problems.
    """
    unbatched = pose0.dim() == 2
    start = pose0.unsqueeze(0) if unbatched else pose0
    if not differentiable:
        start = start.detach()
    n, dtype, device = start.shape[0], start.dtype, start.device
    scale_t = torch.ones(6, dtype=dtype, device=device)
    if scale is not None:
        scale_t = torch.as_tensor(scale, dtype=dtype, device=device).expand(6)
    linearise = _linearisation(residual_at, jacobian, scale_t, fd_step, differentiable)
    eye = torch.eye(6, dtype=dtype, device=device)

    grad_mode = contextlib.nullcontext() if differentiable else torch.no_grad()
    with grad_mode:
        pose = start
        r, jac = linearise(pose)
        cost = 0.5 * (r * r).sum(-1)
        ok = torch.isfinite(cost) & torch.isfinite(jac).flatten(1).all(-1)
        reasons = ["running" if good else "non_finite" for good in ok.tolist()]
        active, converged = ok.clone(), torch.zeros(n, dtype=torch.bool, device=device)
        lam = torch.full((n,), float(lambda0), dtype=dtype, device=device)
        nu = torch.full((n,), 2.0, dtype=dtype, device=device)
        iterations = torch.zeros(n, dtype=torch.long, device=device)
        costs, lambdas = [cost.detach().clone()], [lam.clone()]

        for k in range(max_iterations):
            if not bool(active.any()):
                break
            iterations += active.long()
            system, g, d = _damped_system(r, jac, lam, scale_t)
            # Finished problems solve a harmless system, keeping NaNs out of the batch.
            system = torch.where(active[:, None, None], system, eye)
            g = torch.where(active[:, None], g, 0.0)
            h_y = torch.linalg.solve(system, -g)
            good_step = torch.isfinite(h_y).all(-1)
            h_y = torch.where(good_step[:, None], h_y, 0.0)
            h = h_y / scale_t
            step_norm = h_y.detach().norm(dim=-1)

            small = active & good_step & (step_norm <= step_tol)
            trying = active & ~small
            with torch.no_grad():  # the trial only decides; its graph is never needed
                r_try = residual_at(pose, h)
            cost_try = 0.5 * (r_try * r_try).sum(-1)
            hd, gd, dd = h_y.detach(), g.detach(), d.detach()
            predicted = 0.5 * ((lam[:, None] * dd * hd * hd).sum(-1) - (hd * gd).sum(-1))
            actual = cost.detach() - cost_try
            finite = torch.isfinite(cost_try) & good_step & (predicted > 0)
            rho = torch.where(finite, actual / torch.where(finite, predicted, 1.0), -1.0)
            accept = trying & (rho > 0)
            reject = trying & ~accept
            flat = accept & (actual <= cost_tol * cost.detach())

            # A step below step_tol is still taken (if it does not raise the cost): it ends the
            # run, and when unrolled it carries the sensitivity of the optimum (one Newton step).
            last = small & torch.isfinite(cost_try) & (cost_try <= cost.detach())
            move = accept | last
            pose = torch.where(move[:, None, None], perturb(pose, h), pose)
            cost = torch.where(last, cost_try, cost)
            shrink = torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3)
            lam = torch.where(accept, lam * shrink, torch.where(reject, lam * nu, lam))
            nu = torch.where(accept, 2.0, torch.where(reject, nu * 2, nu))

            if bool(accept.any()):
                r_new, jac_new = linearise(pose)
                cost_new = 0.5 * (r_new * r_new).sum(-1)
                r = torch.where(accept[:, None], r_new, r)
                jac = torch.where(accept[:, None, None], jac_new, jac)
                cost = torch.where(accept, cost_new, cost)
                broken = accept & ~(
                    torch.isfinite(cost_new) & torch.isfinite(jac_new).flatten(1).all(-1)
                )
            else:
                broken = torch.zeros_like(accept)

            blown = reject & (lam > MAX_LAMBDA)
            for mask, name in (
                (small, "step"),
                (broken, "non_finite"),
                (flat, "cost"),
                (blown, "damping"),
            ):
                for i in (active & mask).nonzero().flatten().tolist():
                    if reasons[i] == "running":  # first match wins: the order is the priority
                        reasons[i] = name
            converged = converged | small | (flat & ~broken)
            active = active & ~small & ~flat & ~broken & ~blown
            costs.append(cost.detach().clone())
            lambdas.append(lam.clone())
            if callback is not None and callback(k, pose, cost.detach(), lam):
                reasons = ["callback" if reason == "running" else reason for reason in reasons]
                active = torch.zeros_like(active)

        reasons = ["max_iterations" if reason == "running" else reason for reason in reasons]
        xi = se3_log(relative(start, pose))

    result = LMResult(
        pose=pose,
        xi=xi,
        cost=cost,
        cost_history=torch.stack(costs),
        lambdas=torch.stack(lambdas),
        iterations=iterations,
        converged=converged,
        stop_reason=reasons,
    )
    if unbatched:
        result = LMResult(
            pose=result.pose[0],
            xi=result.xi[0],
            cost=result.cost[0],
            cost_history=result.cost_history[:, 0],
            lambdas=result.lambdas[:, 0],
            iterations=result.iterations[0],
            converged=result.converged[0],
            stop_reason=result.stop_reason,
        )
    return result


def _damped_system(
    r: torch.Tensor, jac: torch.Tensor, lam: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(J^T J + lambda D, J^T r, D)`` in scaled increments ``y = scale * dxi``, with
    Marquardt's ``D = diag(J^T J)`` (floored so flat directions stay invertible)."""
    jac_y = jac / scale
    a = jac_y.mT @ jac_y
    g = (jac_y.mT @ r.unsqueeze(-1)).squeeze(-1)
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    tiny = torch.finfo(r.dtype).tiny
    d = torch.maximum(diag, 1e-12 * diag.amax(-1, keepdim=True).detach() + tiny)
    return a + torch.diag_embed(lam.unsqueeze(-1) * d), g, d


def damped_step(
    r: torch.Tensor, jac: torch.Tensor, lam: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """One Levenberg-Marquardt increment ``dxi`` (N,6) of the linearisation ``(r (N,M),
    J (N,M,6))`` with damping ``lam`` (N,): differentiable in ``r`` and ``J``."""
    system, g, _ = _damped_system(r, jac, lam, scale)
    return torch.linalg.solve(system, -g) / scale


def _linearisation(
    residual_at: ResidualAt,
    jacobian: JacobianMode | JacobianFn,
    scale: torch.Tensor,
    fd_step: float,
    differentiable: bool,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Return ``pose -> (r (N,M), J (N,M,6))`` at ``dxi = 0`` for the chosen Jacobian."""

    def reverse(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = pose.shape[0]
        zero = pose.new_zeros(n, 6)
        r, vjp_fn = torch.func.vjp(lambda dxi: residual_at(pose, dxi), zero)
        m = _check_residual(r, n).shape[-1]
        cotangents = torch.eye(m, dtype=r.dtype, device=r.device)[:, None, :].expand(m, n, m)
        (jac_t,) = torch.func.vmap(vjp_fn)(cotangents)  # (M, N, 6): row m of every J
        return r, jac_t.permute(1, 0, 2)

    def forward(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = pose.shape[0]

        def shared(dxi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # One increment broadcast to every problem: problems are independent, so the
            # Jacobian of the batch w.r.t. the shared increment is the per-problem one.
            out = residual_at(pose, dxi.expand(n, 6))
            return out, out

        jac, r = torch.func.jacfwd(shared, has_aux=True)(pose.new_zeros(6))
        _check_residual(r, n)
        return r, jac

    def finite(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = pose.shape[0]
        zero = pose.new_zeros(n, 6)
        r = _check_residual(residual_at(pose, zero), n)
        columns = []
        for k in range(6):
            step = zero.clone()
            step[:, k] = fd_step / scale[k]
            diff = residual_at(pose, step) - residual_at(pose, -step)
            columns.append(diff / (2 * step[:, k : k + 1]))
        return r, torch.stack(columns, dim=-1)

    def supplied(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert callable(jacobian)
        if differentiable:
            r, jac = jacobian(pose)
        else:
            with torch.enable_grad():
                r, jac = jacobian(pose)
            r, jac = r.detach(), jac.detach()
        n = pose.shape[0]
        _check_residual(r, n)
        if jac.shape != (*r.shape, 6):
            raise ValueError(f"Jacobian must have shape {(*r.shape, 6)}, got {tuple(jac.shape)}")
        return r, jac

    if callable(jacobian):
        return supplied
    modes = {"autograd": reverse, "reverse": reverse, "forward": forward, "finite": finite}
    if jacobian not in modes:
        raise ValueError(f"unknown jacobian mode {jacobian!r}; choose from {sorted(modes)}")
    return modes[jacobian]


def _check_residual(r: torch.Tensor, n: int) -> torch.Tensor:
    if r.dim() != 2 or r.shape[0] != n:
        raise ValueError(f"residual must have shape (N={n}, M), got {tuple(r.shape)}")
    return r
