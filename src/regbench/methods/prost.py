"""ProST's test-time procedures (Gao et al.): ProST-m (MICCAI 2020) and ProST-t (IEEE TMI 2023).

Both descend the learned similarity first (its training: ``train/similarity.py``; ProST-m
matches gradient directions, ProST-t gradient vectors by their SE(3) geodesic distance), then
hand over to an intensity similarity once it has settled:

* **stage 1, both** (the authors' ``test_regi.py``): SGD with momentum 0.9 on the learned
  distance itself (raw gradients, no normalisation) over ProST's pose coordinates
  ``u = (omega [rad], v / L)`` (translation over a characteristic length; the code: half the
  CT's extent); it ends when the standard deviation of the last ``window`` distances is below
  ``switch_tol`` (the code: 10 and 0.003), or at ``similarity_iterations``;
* **stage 2, ProST-m** (MICCAI's "Net+GradNCC", the same script): SGD with momentum 0.9 on
  ``1 - gradient NCC`` with a triangular cyclic learning rate (the code: 0.001 to 0.003, 20
  iterations up), until the std of its last ``window`` values is below ``stop_tol`` (1e-4);
* **stage 2, ProST-t** (TMI: "ProST followed by CMAES"): CMA-ES on ``1 - gradient NCC`` from
  stage 1's pose. The TMI branch of the authors' code has no CMA-ES script (its
  ``test_regi.py`` is the MICCAI one); the objective is the code's gradient NCC and the step
  sizes and budget are ours (config ``prost-t``).

Deviations: ``u`` is a chart around the initial pose (``pose = init @ exp(u_w, L u_v)``, camera
frame) rather than the code's global rotation vector and translation; gradient NCC is
diffdrr's (global, Sobel) inside the collimator border; stage 2's stop test uses its own values
only (the code also counts the last stage-1 iterations, where it evaluates both similarities);
budgets are CPU-sized (the code: 500 iterations in all).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from regbench.geometry.poses import perturb
from regbench.methods.base import Trace


def prost_increment(u: torch.Tensor, L: float) -> torch.Tensor:
    """ProST's coordinates ``(omega, v / L)`` -> camera increments ``(omega, v [mm])``."""
    return torch.cat([u[..., :3], L * u[..., 3:]], dim=-1)


def plateaued(values: list[float], window: int, tol: float) -> bool:
    """The authors' convergence test: more than ``window`` values recorded and the (population)
    standard deviation of the last ``window`` below ``tol``."""
    return len(values) > window and float(np.std(values[-window:])) < tol


def cyclic_lr(iteration: int, base: float, peak: float, half_period: int) -> float:
    """Triangular cyclic learning rate (torch's ``CyclicLR`` ``triangular`` mode): ``base`` at
    iteration 0, ``peak`` at ``half_period``, ``base`` again at ``2 half_period``, and so on."""
    cycle = math.floor(1 + iteration / (2 * half_period))
    x = abs(iteration / half_period - 2 * cycle + 1)
    return base + (peak - base) * max(0.0, 1.0 - x)


def sgd_stage(
    cost: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    L: float,
    lr: Callable[[int], float],
    cfg: dict,
    tol: float,
    max_iterations: int,
    trace: Trace,
    done: int = 0,
) -> tuple[torch.Tensor, int]:
    """SGD with momentum ``cfg["momentum"]`` on ``cost(pose)`` (summed) over ``u`` (pose = init @
    exp(prost_increment(u))), learning rate ``lr(iteration)`` (iteration from 0), until the cost
    plateaus (:func:`plateaued` with ``cfg["window"]`` and ``tol``) or ``max_iterations``.
    Returns the last pose (1,4,4) and the iterations taken; a non-finite cost ends the stage at
    the last finite pose."""
    base = init.double().reshape(1, 4, 4)
    u = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([u], lr=lr(0), momentum=cfg["momentum"])
    pose, history = base, []
    for iteration in range(max_iterations):
        current = perturb(base, prost_increment(u, L))
        value = cost(current).sum()
        if not torch.isfinite(value):
            return pose, iteration
        pose = current.detach()
        history.append(value.item())
        if plateaued(history, cfg["window"], tol):
            return pose, iteration
        for group in optimizer.param_groups:
            group["lr"] = lr(iteration)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        trace.record(done + iteration + 1, perturb(base, prost_increment(u.detach(), L)))
    return perturb(base, prost_increment(u.detach(), L)), max_iterations


def cmaes(
    f: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    sigma: float,
    popsize: int,
    max_evaluations: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float, int]:
    """Minimise ``f`` ((lambda, dim) points -> (lambda,) values) with CMA-ES from the origin
    (Hansen's (mu/mu_w, lambda) strategy: cumulative step-size adaptation, rank-one and rank-mu
    covariance updates, default weights and rates). Returns the best point seen, its value and
    the evaluations spent."""
    n, lam = dim, popsize
    mu = lam // 2
    w = math.log(mu + 0.5) - torch.log(torch.arange(1, mu + 1, dtype=torch.float64))
    w = w / w.sum()
    mu_eff = float(1 / (w**2).sum())
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    mean = torch.zeros(n, dtype=torch.float64)
    cov = torch.eye(n, dtype=torch.float64)
    p_sigma, p_c = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    best_x, best_f = mean.clone(), float(f(mean[None])[0])
    evaluations, generation = 1, 0
    while evaluations + lam <= max_evaluations:
        generation += 1
        eigval, basis = torch.linalg.eigh(cov)
        scale = eigval.clamp_min(1e-20).sqrt()
        z = torch.randn(lam, n, dtype=torch.float64, generator=generator)
        y = (z * scale) @ basis.T  # ~ N(0, C)
        x = mean + sigma * y
        values = f(x).double()
        evaluations += lam
        order = torch.argsort(values)
        if values[order[0]] < best_f:
            best_f, best_x = float(values[order[0]]), x[order[0]].clone()
        y_sel = y[order[:mu]]
        y_w = (w[:, None] * y_sel).sum(0)
        mean = mean + sigma * y_w
        inv_sqrt = basis @ torch.diag(1 / scale) @ basis.T
        p_sigma = (1 - c_sigma) * p_sigma + math.sqrt(c_sigma * (2 - c_sigma) * mu_eff) * (
            inv_sqrt @ y_w
        )
        norm_ratio = float(p_sigma.norm()) / chi_n
        h_sigma = float(
            p_sigma.norm() / math.sqrt(1 - (1 - c_sigma) ** (2 * generation))
            < (1.4 + 2 / (n + 1)) * chi_n
        )
        p_c = (1 - c_c) * p_c + h_sigma * math.sqrt(c_c * (2 - c_c) * mu_eff) * y_w
        rank_mu = (w[:, None, None] * (y_sel[:, :, None] * y_sel[:, None, :])).sum(0)
        cov = (
            (1 - c_1 - c_mu) * cov
            + c_1 * (torch.outer(p_c, p_c) + (1 - h_sigma) * c_c * (2 - c_c) * cov)
            + c_mu * rank_mu
        )
        cov = (cov + cov.T) / 2
        sigma = sigma * math.exp((c_sigma / d_sigma) * (norm_ratio - 1))
    return best_x, best_f, evaluations
