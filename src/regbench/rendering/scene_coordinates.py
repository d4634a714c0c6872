"""Scene-coordinate labels: where each detector ray enters and leaves the bone.

SCR-reg (Shrestha et al. 2023) regresses, per X-ray pixel, the 3D world points at which its ray
first and last meets bone. The labels must come from the very rays and samples the training
DRR is rendered with, or the network would learn a shifted geometry: so the samples here are
those of :class:`~regbench.rendering.torch_projector.FeatureProjector` (and its compiled
subclass), which renders the training X-rays: diffdrr's rays of the pose, ``n_points`` samples
uniform in the ray parameter over the pose's own alpha range. Each sample reads the CT's HU by
trilinear interpolation (voxel centres at integer voxel coordinates, air, -1000 HU, outside the
grid); the labels are the first and the last sample above the bone threshold, NaN where no
sample of the ray is bone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from regbench.rendering.torch_projector import FeatureProjector, sample_alphas

AIR_HU = -1000.0
BONE_HU = 350.0  # diffdrr's soft-tissue/bone boundary (transform_hu_to_density)
_CHUNK_SAMPLES = 1 << 20  # samples held at once (rays x samples per ray)


class BoneEntryExit:
    """Entry and exit points of the bone along a projector's rays, for one CT."""

    def __init__(
        self,
        projector: FeatureProjector,
        ct_hu: np.ndarray,
        affine: np.ndarray,
        threshold_hu: float = BONE_HU,
    ) -> None:
        """``ct_hu`` (X,Y,Z) in HU, ``affine`` (4,4) voxel -> world mm (the prepared CT's)."""
        self.projector = projector
        self.shape = tuple(int(s) for s in ct_hu.shape)
        # Shifted so that grid_sample's zero padding reads air.
        hu = torch.from_numpy(np.ascontiguousarray(ct_hu, dtype=np.float32)) - AIR_HU
        self.volume = hu[None, None]  # (1,1,X,Y,Z)
        self.world_to_voxel = torch.linalg.inv(torch.as_tensor(affine, dtype=torch.float64))
        self.threshold = float(threshold_hu)

    def hu_at(self, voxel: torch.Tensor) -> torch.Tensor:
        """Trilinear HU at voxel coordinates (...,3) (air outside the grid), float32."""
        size = torch.tensor(self.shape, dtype=torch.float32, device=voxel.device) - 1
        grid = (2 * voxel.float() / size.clamp_min(1) - 1).flip(-1)  # grid_sample's (z,y,x)
        flat = grid.reshape(1, 1, 1, -1, 3)
        values = F.grid_sample(self.volume, flat, mode="bilinear", align_corners=True)
        return values.reshape(voxel.shape[:-1]) + AIR_HU

    def __call__(self, poses: torch.Tensor, n_points: int) -> torch.Tensor:
        """(N,4,4) poses -> (N,2,H,W,3) float64 world points (entry, exit) in mm, NaN where
        the pixel's ray meets no bone; on the projector's device."""
        device = self.projector.source.device
        self.volume = self.volume.to(device)
        poses = poses.reshape(-1, 4, 4).to(device=device, dtype=torch.float64)
        lo, hi = self.projector.alpha_range(poses, self.shape)
        chunk = max(1, _CHUNK_SAMPLES // n_points)
        out = []
        for pose, a0, a1 in zip(poses, lo, hi, strict=True):
            source, targets = self.projector.rays(pose[None])  # (1,1,3), (1,R,3)
            alphas = sample_alphas(a0.reshape(1, 1), a1.reshape(1, 1), n_points)[0]  # (P,)
            pairs = [
                self._first_and_last(source[0], targets[0, i : i + chunk], alphas)
                for i in range(0, targets.shape[1], chunk)
            ]
            out.append(torch.cat(pairs, dim=1).reshape(2, self.projector.height, -1, 3))
        return torch.stack(out)

    def _first_and_last(
        self, source: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor
    ) -> torch.Tensor:
        """(1,3) source, (R,3) targets, (P,) ray parameters -> (2,R,3) first and last bone
        samples (NaN where none). The samples are located in float32 voxel coordinates (a
        threshold test), the chosen two in float64 world coordinates."""
        to_voxel = self.world_to_voxel.to(source.device)
        src = source @ to_voxel[:3, :3].T + to_voxel[:3, 3]  # (1,3)
        span = (targets - source) @ to_voxel[:3, :3].T  # (R,3)
        voxel = src.float() + alphas.float()[None, :, None] * span.float()[:, None]  # (R,P,3)
        bone = self.hu_at(voxel) > self.threshold  # (R,P)
        first = bone.int().argmax(dim=1)
        last = len(alphas) - 1 - bone.flip(1).int().argmax(dim=1)
        ends = torch.stack([alphas[first], alphas[last]])[..., None]  # (2,R,1)
        pair = source + ends * (targets - source)  # (2,R,3)
        return pair.masked_fill(~bone.any(dim=1)[None, :, None], float("nan"))
