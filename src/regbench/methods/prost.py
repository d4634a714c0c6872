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

from collections.abc import Callable

import numpy as np
import torch

from regbench.geometry.poses import perturb, scale_translation
from regbench.methods.base import Trace


def plateaued(values: list[float], window: int, tol: float) -> bool:
    """The authors' convergence test: more than ``window`` values recorded and the (population)
    standard deviation of the last ``window`` below ``tol``."""
    return len(values) > window and float(np.std(values[-window:])) < tol


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
    exp(scale_translation(u, L))), learning rate ``lr(iteration)`` (iteration from 0), until the cost
    plateaus (:func:`plateaued` with ``cfg["window"]`` and ``tol``) or ``max_iterations``.
    Returns the last pose (1,4,4) and the iterations taken; a non-finite cost ends the stage at
    the last finite pose."""
    base = init.double().reshape(1, 4, 4)
    u = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([u], lr=lr(0), momentum=cfg["momentum"])
    pose, history = base, []
    for iteration in range(max_iterations):
        current = perturb(base, scale_translation(u, L))
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
        trace.record(done + iteration + 1, perturb(base, scale_translation(u.detach(), L)))
    return perturb(base, scale_translation(u.detach(), L)), max_iterations


def cmaes(
    f: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    sigma: float,
    popsize: int,
    max_evaluations: int,
    seed: int,
) -> tuple[torch.Tensor, float, int]:
    """Minimise ``f`` ((lambda, dim) points -> (lambda,) values) with CMA-ES from the origin (the
    ``cmaes`` package's (mu/mu_w, lambda) strategy with its default weights and rates); each
    generation is one batched call of ``f``. Returns the best point seen, its value and the
    evaluations spent."""
    from cmaes import CMA

    optimizer = CMA(mean=np.zeros(dim), sigma=sigma, population_size=popsize, seed=seed)
    best_x = torch.zeros(dim, dtype=torch.float64)
    best_f, evaluations = float(f(best_x[None])[0]), 1
    while evaluations + popsize <= max_evaluations:
        points = np.stack([optimizer.ask() for _ in range(popsize)])
        values = f(torch.from_numpy(points)).double()
        evaluations += popsize
        i = int(torch.argmin(values))
        if float(values[i]) < best_f:
            best_f, best_x = float(values[i]), torch.from_numpy(points[i]).clone()
        optimizer.tell(list(zip(points, values.tolist(), strict=True)))
    return best_x, best_f, evaluations
