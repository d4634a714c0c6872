"""DiffPose: Adam on the negative multiscale NCC between the X-ray and the DRR.

Search space: the C-arm parameterization (ZXY angles about the isocentre and the source offset),
one Adam parameter group each with its own learning rate, as DiffPose does.

Stopping rule (chosen deliberately): the mNCC curve of Adam flattens for a while before it drops
again, so a plain plateau stop ends too early. We instead halve both learning rates whenever the
best mNCC has not improved by ``tol`` for ``patience`` iterations, and stop only at the plateau
after ``max_decays`` halvings, or at ``max_iterations``. The returned pose is the best seen.
"""

from __future__ import annotations

import torch

from regbench.geometry.poses import carm_params, carm_pose
from regbench.methods.base import Method, Trace
from regbench.methods.similarity import multiscale_ncc


class DiffPose(Method):
    name = "diffpose"

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        cfg = self.context.settings["diffpose"]
        renderer, device = self.context.renderer, self.context.renderer.device
        target = image.to(device)
        ncc = multiscale_ncc(cfg["patch_size"], self.context.border_px)
        rot0, trans0 = carm_params(init[None].to(device=device, dtype=torch.float32))
        rotation = rot0.clone().requires_grad_(True)
        translation = trans0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam(
            [
                {"params": [rotation], "lr": cfg["lr_rotation"]},
                {"params": [translation], "lr": cfg["lr_translation"]},
            ],
            maximize=True,
        )
        best_score, best_pose = -float("inf"), init
        stale, decays, iteration = 0, 0, 0
        for iteration in range(1, cfg["max_iterations"] + 1):
            pose = carm_pose(rotation, translation)
            score = ncc(renderer.render(pose, self.context.n_points), target).mean()
            optimizer.zero_grad()
            score.backward()
            if score.item() > best_score + cfg["tol"]:
                best_score, best_pose, stale = score.item(), pose.detach()[0].double().cpu(), 0
            else:
                stale += 1
            if not torch.isfinite(score):
                break
            optimizer.step()
            trace.record(iteration, best_pose)
            if stale >= cfg["patience"]:
                if decays >= cfg["max_decays"]:
                    break
                decays, stale = decays + 1, 0
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
        return best_pose, iteration
