"""DFLNet (Grupp et al., IJCARS 2020): landmark heatmaps from a U-Net, then PnP with RANSAC.

The subject's own network predicts one heatmap per landmark; each landmark whose heatmap peaks
confidently (:func:`regbench.models.landmark_net.peak_confidence`: template NCC of at least
``min_ncc``, the authors' 0.9 in ``paper.yaml``, 0.6 at the CPU budget) gives a 2D point at its
sub-pixel peak, and OpenCV's ``solvePnPRansac`` on the subject's intrinsics turns them into the
pose. The regressor's start is not used. Fewer than ``min_landmarks`` confident landmarks, or
no RANSAC consensus, fails the X-ray.
"""

from __future__ import annotations

import numpy as np
import torch

from regbench.geometry.pnp import pose_from_correspondences
from regbench.methods.base import OwnModelMethod, RegistrationFailed, Trace
from regbench.models.landmark_net import peak_confidence


class DFLNet(OwnModelMethod):
    name = "dflnet"

    trainer = "regbench.train.dflnet:train_dflnet"
    loader = "regbench.train.dflnet:load_dflnet"

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        cfg = self.context.settings["dflnet"]
        reg = cfg["registration"]
        model = self.context.model
        with torch.no_grad():
            maps = model(image.to(self.context.renderer.device)).cpu()
        points = model.points.cpu().numpy()
        if maps.shape[1] != len(points):
            raise RegistrationFailed(f"{maps.shape[1]} heatmaps for {len(points)} landmarks")
        peaks, ncc = peak_confidence(maps, cfg["training"]["sigma_px"], reg["window_px"])
        confident = (ncc[0] >= reg["min_ncc"]).numpy()
        count = int(confident.sum())
        if count < reg["min_landmarks"]:
            raise RegistrationFailed(
                f"{count} confident landmarks of {len(points)} (< {reg['min_landmarks']})"
            )
        result = pose_from_correspondences(
            peaks[0].numpy()[confident],
            points[confident],
            model.geometry,
            reprojection_px=reg["reprojection_px"],
            iterations=reg["ransac_iterations"],
            confidence=reg["ransac_confidence"],
            seed=int(self.context.settings["seed"]),
        )
        if not result.ok:
            raise RegistrationFailed(f"PnP on {count} confident landmarks: {result.message}")
        pose = torch.from_numpy(np.asarray(result.pose, dtype=np.float64))
        trace.record(1, pose)
        return pose, 1
