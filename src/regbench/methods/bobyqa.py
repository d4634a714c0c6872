"""BOBYQA: Powell's derivative-free trust-region method (Py-BOBYQA) on the negative mNCC.

The search box is centred on the regressor's pose in the C-arm parameterization, with
half-widths ``rotation_bound_deg`` and ``translation_bound_mm``; Py-BOBYQA rescales it to the
unit cube, so ``rhobeg``/``rhoend`` are fractions of the box.
"""

from __future__ import annotations

import math

import numpy as np
import pybobyqa
import torch

from regbench.geometry.poses import carm_params, carm_pose
from regbench.methods.base import Method, Trace
from regbench.methods.similarity import multiscale_ncc


class Bobyqa(Method):
    name = "bobyqa"

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        cfg = self.context.settings["bobyqa"]
        renderer, device = self.context.renderer, self.context.renderer.device
        target = image.to(device)
        ncc = multiscale_ncc(cfg["patch_size"], self.context.border_px)
        rot0, trans0 = (p[0].double().cpu() for p in carm_params(init[None].double()))
        half = np.array(
            [math.radians(cfg["rotation_bound_deg"])] * 3 + [cfg["translation_bound_mm"]] * 3
        )
        x0 = np.zeros(6)

        def pose_of(x: np.ndarray) -> torch.Tensor:
            d = torch.from_numpy(x)
            return carm_pose((rot0 + d[:3])[None], (trans0 + d[3:])[None])

        best = {"value": math.inf, "pose": init}
        evaluations = 0

        def objective(x: np.ndarray) -> float:
            nonlocal evaluations
            evaluations += 1
            pose = pose_of(x)
            with torch.no_grad():
                value = -float(ncc(renderer.render(pose, self.context.n_points), target).mean())
            if not math.isfinite(value):
                value = 1.0  # worst possible -NCC: steer away from degenerate poses
            if value < best["value"]:
                best.update(value=value, pose=pose[0].double())
            trace.record(evaluations, best["pose"])
            return value

        pybobyqa.solve(
            objective,
            x0,
            bounds=(-half, half),
            maxfun=cfg["max_evaluations"],
            rhobeg=cfg["rhobeg"],
            rhoend=cfg["rhoend"],
            scaling_within_bounds=True,
            seek_global_minimum=False,
            do_logging=False,
            print_progress=False,
        )
        return best["pose"], evaluations
