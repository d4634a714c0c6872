"""First-order descent of a pose objective: the optimiser study's GD/Adam, SOPI's SGD with
momentum and a cyclic learning rate, CDReg's gradient refinement.

The variables are one increment ``xi = (omega [rad], v [mm])`` about the start pose (right
perturbation, ``pose = init @ exp(xi)``), in two parameter groups (rotation, translation) so
that each gets a learning rate in its own unit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from regbench.geometry.poses import perturb

log = logging.getLogger(__name__)

Objective = Callable[[torch.Tensor], torch.Tensor]
"""``objective(pose (1,4,4)) -> scalar`` cost, differentiable in the pose."""


def triangular_lr(iteration: int, base: float, peak: float, half_cycle: int) -> float:
    """Smith's triangular cyclic learning rate (PyTorch's ``CyclicLR`` default mode): ``base``
    at iteration 0, rising linearly to ``peak`` at ``half_cycle``, back to ``base`` at
    ``2 half_cycle``, and so on. SOPI's test-time schedule (base 4e-4, peak 6e-4, 20)."""
    cycle_position = iteration / half_cycle
    x = abs(cycle_position % 2 - 1)  # 1 at the cycle's ends, 0 at its peak
    return base + (peak - base) * (1 - x)


def unit_parts(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """One parameter group's gradient scaled to unit norm: the step then follows the
    direction alone (a similarity trained on gradient directions has no meaningful gradient
    magnitude)."""
    return grad / (grad.norm() + eps)


def descend(
    objective: Objective,
    init: torch.Tensor,
    optimizer: Callable[[list[dict]], torch.optim.Optimizer],
    lrs: tuple[float, float],
    iterations: int,
    on_step: Callable[[int, torch.Tensor], None],
    *,
    schedule: Callable[[int], tuple[float, float]] | None = None,
    unit_gradients: bool = False,
) -> torch.Tensor:
    """Minimise ``objective`` from ``init`` (4,4) over ``xi``; returns the last finite pose
    (4,4) float64.

    ``optimizer(groups)`` builds the optimiser on the rotation and translation groups with
    learning rates ``lrs``; ``schedule(iteration) -> (lr_rotation, lr_translation)`` sets them
    before each step (iterations count from 1). ``unit_gradients`` normalises each group's
    gradient (:func:`unit_parts`). ``on_step(iteration, pose)`` sees every accepted pose. A
    trajectory that leaves the finite (or a camera a kilometre away) ends where it was.
    """
    base = init.double().reshape(1, 4, 4)
    omega = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    v = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    groups = [{"params": [omega], "lr": lrs[0]}, {"params": [v], "lr": lrs[1]}]
    opt = optimizer(groups)
    pose = base
    for iteration in range(1, iterations + 1):
        if schedule is not None:
            for group, lr in zip(opt.param_groups, schedule(iteration), strict=True):
                group["lr"] = lr
        cost = objective(perturb(base, torch.cat([omega, v], -1)))
        opt.zero_grad()
        cost.backward()
        if unit_gradients:
            for part in (omega, v):
                part.grad = unit_parts(part.grad)
        opt.step()
        moved = perturb(base, torch.cat([omega, v], -1).detach())
        if not torch.isfinite(moved).all() or moved[..., :3, 3].abs().max() > 1e6:
            log.warning("first-order descent diverged at iteration %d", iteration)
            break
        pose = moved
        on_step(iteration, pose[0])
    return pose[0]
