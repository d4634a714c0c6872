"""Pose regressor: a timm backbone mapping an X-ray to a pose (the initialiser of every method).

Parameterization: the network outputs six numbers z; the pose is the C-arm parameterization
(ZXY angles about the isocentre, source offset; see :mod:`regbench.geometry.poses`) with
``angles = mean + z[:3] * std`` and ``offset = mean + z[3:] * std``, mean and std those of the
clinical prior, so every output is of order one.
"""

from __future__ import annotations

import timm
import torch

from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.inputs import standardize


class PoseRegressor(torch.nn.Module):
    def __init__(self, backbone: str, prior: PosePrior):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=6, in_chans=1)
        rot_mean, trans_mean = prior.mean_params()
        rot_std, trans_std = prior.std_params()
        self.register_buffer("mean", torch.cat([rot_mean, trans_mean]).float())
        self.register_buffer("scale", torch.cat([rot_std, trans_std]).clamp_min(1e-6).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) images -> (N,6) normalised C-arm parameters."""
        return self.backbone(standardize(images))

    def normalise(self, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        return (torch.cat([rotation, translation], dim=-1).float() - self.mean) / self.scale

    def to_pose(self, z: torch.Tensor) -> torch.Tensor:
        """(N,6) normalised parameters -> (N,4,4) float64 poses."""
        params = (z.double() * self.scale.double()) + self.mean.double()
        return carm_pose(params[:, :3], params[:, 3:])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.to_pose(self(images))
