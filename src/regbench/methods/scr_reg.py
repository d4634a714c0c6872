"""SCR-reg (Shrestha et al., MICCAI 2023): scene-coordinate regression, then PnP with RANSAC.

A U-Net predicts, per X-ray pixel, the world points where its ray enters and leaves the bone,
each with an isotropic uncertainty (:mod:`regbench.models.scene_coordinates`). The pose needs
no initial estimate: the entry and exit points whose standard deviation is below
``max_std_mm`` (the authors' code: ``log sigma < 0`` at its 100 mm coordinate scale) are pooled
with their pixel centres and handed to PnP with RANSAC (iterations and confidence as in the
authors' code; the default reprojection threshold is their 20 px on 512 px images, scaled to
the default 64 px detector). Pixels of the X-rays' collimator border carry no image and are
left out.
"""

from __future__ import annotations

import math

import torch

from regbench.geometry.pnp import MIN_POINTS, pose_from_correspondences
from regbench.methods.base import OwnModelMethod, RegistrationFailed, Trace
from regbench.models.heatmaps import pixel_centres
from regbench.models.scene_coordinates import split_outputs
from regbench.train.scr_reg import METHOD


class SCRReg(OwnModelMethod):
    name = METHOD

    trainer = "regbench.train.scr_reg:train_scr_reg"
    loader = "regbench.train.scr_reg:load_scr_reg"

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        cfg = self.context.settings[METHOD]["registration"]
        model = self.context.model
        device = next(model.parameters(), torch.empty(0)).device
        with torch.no_grad():
            raw = model(image.reshape(1, 1, *image.shape[-2:]).to(device)).double().cpu()
        pred = split_outputs(raw, model.scale_mm)
        h, w = raw.shape[-2:]
        keep = pred.log_std_mm[0] < math.log(cfg["max_std_mm"])  # (2,H,W)
        keep &= torch.isfinite(pred.points_mm[0]).all(dim=-1)
        border = self.context.border_px
        if border:
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[border : h - border, border : w - border] = True
            keep &= inside
        pixels = pixel_centres(h, w).expand(2, h, w, 2)[keep]
        points = pred.points_mm[0][keep]
        if len(points) < MIN_POINTS:
            raise RegistrationFailed(
                f"{len(points)} pixels with an uncertainty below {cfg['max_std_mm']} mm "
                f"(< {MIN_POINTS})"
            )
        result = pose_from_correspondences(
            pixels.numpy(),
            points.numpy(),
            model.geometry,
            reprojection_px=cfg["reprojection_px"],
            iterations=cfg["ransac_iterations"],
            confidence=cfg["ransac_confidence"],
            seed=int(self.context.settings["seed"]),
        )
        if not result.ok:
            raise RegistrationFailed(result.message)
        pose = torch.from_numpy(result.pose)
        trace.record(1, pose)
        return pose, 1
