"""SOPI's specific parameter initialisation: its initialiser's training loss.

The authors' RTPI network regresses the pose from the CT and the X-ray, trained on the pose
error plus the NCC of the DRR rendered at its prediction with the X-ray. Per subject the CT
input is a constant, so here the initialiser is a pose regressor on the X-ray alone, started
from the subject's regressor (the one every method's initial pose comes from) and fine-tuned
with SOPI's loss inside the similarity training: the SE(3) geodesic distance of its
prediction to the truth plus ``ncc_weight (1 - NCC)`` of the DRR at the prediction.
"""

from __future__ import annotations

import torch
from diffdrr.metrics import NormalizedCrossCorrelation2d

from regbench.geometry.targets import pose_distance_mm
from regbench.models.regressor import PoseRegressor
from regbench.models.similarity import SimilarityGeometry, resize_images


def geodesic_loss(pose: torch.Tensor, pose_gt: torch.Tensor, L: float) -> torch.Tensor:
    """Mean SE(3) geodesic distance [rad; translation over ``L`` mm] of (N,4,4) poses to the
    truth: ProST's left-canonical metric, as SOPI's geomstats distance."""
    return (pose_distance_mm(pose, pose_gt, L, "se3") / L).mean()


def initialiser_loss(
    initialiser: PoseRegressor,
    setup: SimilarityGeometry,
    xrays: torch.Tensor,
    pose_gt: torch.Tensor,
    bone: torch.Tensor,
    ncc_weight: float,
) -> torch.Tensor:
    """SOPI's initialiser loss on training X-rays (N,1,H,W) at the similarity's detector,
    rendered at ``pose_gt`` (N,4,4); the DRR at the prediction is composed with ``bone`` (N,)."""
    detector = setup.prepared.geometry  # the regressor sees X-rays at their own size
    inputs = resize_images(xrays, int(detector["height"]), int(detector["width"]))
    pose = initialiser.to_pose(initialiser(inputs))
    loss = geodesic_loss(pose, pose_gt.to(pose), setup.characteristic_length)
    if ncc_weight > 0:
        parts = setup.drr(pose)
        drr = parts[:, :1] + bone.to(parts)[:, None, None, None] * parts[:, 1:2]
        ncc = NormalizedCrossCorrelation2d()(drr.float(), xrays.float())
        loss = loss + ncc_weight * (1 - ncc).mean()
    return loss
