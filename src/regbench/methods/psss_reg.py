"""PSSS-reg (Zhang et al., MICCAI 2023): the patient's own regression network, then gradient
descent on ZNCC through the differentiable renderer.

The subject's network (:mod:`regbench.models.psss_net`, trained by
:mod:`regbench.train.psss_reg`) gives the start; the shared regressor is not used. The
refinement is the authors' demo's (``run_convergence_adam_noplt``): Adam on ``1 - ZNCC``
between the X-ray and the DRR, one parameter group for the angles and one for the offsets, a
step decay of both learning rates (``lr_step`` iterations, factor ``lr_gamma``), the best pose
seen returned, and a stop once the loss is at most ``tol``. The search space is the C-arm
parameterization, as DiffPose's; the X-rays' collimator border is left out of the ZNCC.
"""

from __future__ import annotations

import torch

from regbench.geometry.poses import carm_params, carm_pose
from regbench.methods.base import OwnModelMethod, Trace
from regbench.methods.similarity import zncc
from regbench.train.psss_reg import METHOD


class PSSSReg(OwnModelMethod):
    name = METHOD

    trainer = "regbench.train.psss_reg:train_psss_reg"
    loader = "regbench.train.psss_reg:load_psss_reg"

    def initial_pose(self, image: torch.Tensor) -> torch.Tensor:
        """The subject's own network's estimate (the paper's pipeline)."""
        model = self.context.model
        device = next(model.parameters()).device
        return model.predict(image.reshape(1, 1, *image.shape[-2:]).to(device))[0].cpu()

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        cfg = self.context.settings[METHOD]["registration"]
        renderer = self.context.renderer
        target = image.to(renderer.device)
        similarity = zncc(self.context.border_px)
        rot0, trans0 = carm_params(init[None].to(device=renderer.device, dtype=torch.float32))
        rotation = rot0.clone().requires_grad_(True)
        translation = trans0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam(
            [
                {"params": [rotation], "lr": cfg["lr_rotation"]},
                {"params": [translation], "lr": cfg["lr_translation"]},
            ]
        )
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, cfg["lr_step"], cfg["lr_gamma"])
        best_loss, best_pose, iteration = float("inf"), init, 0
        for iteration in range(1, cfg["max_iterations"] + 1):
            pose = carm_pose(rotation, translation)
            drr = renderer.render(pose, self.context.n_points)
            loss = 1.0 - similarity(drr, target).mean()
            if not torch.isfinite(loss):
                break
            if loss.item() < best_loss:
                best_loss, best_pose = loss.item(), pose.detach()[0].double().cpu()
            trace.record(iteration, best_pose)
            if best_loss <= cfg["tol"]:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        return best_pose, iteration
