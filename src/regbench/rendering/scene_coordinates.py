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

On the CPU the search is a compiled kernel (numba) that walks each ray from its front until the
first bone sample and from its back until the last one, so a ray costs the samples up to its
bone, not all ``n_points``; elsewhere the same trilinear reading runs as ``grid_sample`` over
every sample. Both read the same float32 coordinates and weights (tested against each other).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from regbench.rendering.compiled_projector import use_torch_threads
from regbench.rendering.torch_projector import FeatureProjector, sample_alphas

AIR_HU = -1000.0
BONE_HU = 350.0  # diffdrr's soft-tissue/bone boundary (transform_hu_to_density)
_CHUNK_SAMPLES = 1 << 20  # samples held at once (rays x samples per ray)
_BLOCK = 4  # voxels per side of the blocks whose maxima let the kernel skip soft tissue
_MARGIN = 0.01  # HU: a block is skipped when its maximum is this far below the threshold


def _block_max(volume: torch.Tensor, block: int) -> np.ndarray:
    """Maximum of ``volume`` (X,Y,Z) over each block of ``block``^3 voxels and the next voxel
    on each axis: every voxel a sample whose cell starts in the block blends."""
    padded = F.pad(volume[None, None], (0, block, 0, block, 0, block))  # zeros: air
    maxima = F.max_pool3d(padded, block + 1, stride=block)[0, 0]
    return np.ascontiguousarray(maxima.numpy())


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
        self.block_max = _block_max(self.volume[0, 0], _BLOCK)

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
            src, span = self._voxel_ray(source[0], targets[0])
            if device.type == "cpu":
                first, last = self._crossings_compiled(src, span, alphas)
            else:
                pairs = [
                    self._crossings(src, span[i : i + chunk], alphas)
                    for i in range(0, len(span), chunk)
                ]
                first, last = (torch.cat(parts) for parts in zip(*pairs, strict=True))
            hit = first >= 0
            ends = torch.stack([alphas[first.clamp_min(0)], alphas[last.clamp_min(0)]])
            pair = source[0] + ends[..., None] * (targets[0] - source[0])  # (2,R,3)
            pair = pair.masked_fill(~hit[None, :, None], float("nan"))
            out.append(pair.reshape(2, self.projector.height, -1, 3))
        return torch.stack(out)

    def _voxel_ray(
        self, source: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,3) source, (R,3) targets in world mm -> float32 voxel source (3,) and spans (R,3):
        sample ``alpha`` of a ray sits at ``src + alpha * span`` (the threshold test's
        coordinates; the chosen samples are placed in float64 world coordinates)."""
        to_voxel = self.world_to_voxel.to(source.device)
        src = source @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        span = (targets - source) @ to_voxel[:3, :3].T
        return src[0].float(), span.float()

    def _crossings(
        self, src: torch.Tensor, span: torch.Tensor, alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (R,) of each ray's first and last bone sample, -1 where none (every
        sample read at once)."""
        voxel = src + alphas.float()[None, :, None] * span[:, None]  # (R,P,3)
        bone = self.hu_at(voxel) > self.threshold  # (R,P)
        hit = bone.any(dim=1)
        first = bone.int().argmax(dim=1)
        last = len(alphas) - 1 - bone.flip(1).int().argmax(dim=1)
        return first.masked_fill(~hit, -1), last.masked_fill(~hit, -1)

    def _crossings_compiled(
        self, src: torch.Tensor, span: torch.Tensor, alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_crossings` by the compiled kernel: each ray read from its ends inwards."""
        first = np.empty(len(span), dtype=np.int64)
        last = np.empty(len(span), dtype=np.int64)
        use_torch_threads()
        _bone_crossings(
            self.volume[0, 0].numpy(),
            self.block_max,
            _BLOCK,
            src.numpy(),
            span.contiguous().numpy(),
            alphas.float().numpy(),
            np.float32(self.threshold - AIR_HU),
            np.float32(self.threshold - AIR_HU - _MARGIN),
            first,
            last,
        )
        return torch.from_numpy(first), torch.from_numpy(last)


@njit(cache=True)
def _shifted_hu(volume, q0, q1, q2):
    """Trilinear reading of the air-shifted HU ``volume`` (X,Y,Z) at voxel coordinates q, zero
    outside the grid (``grid_sample``'s zero padding with ``align_corners=True``)."""
    c0, c1, c2 = np.floor(q0), np.floor(q1), np.floor(q2)
    f0, f1, f2 = q0 - c0, q1 - c1, q2 - c2
    i0, i1, i2 = int(c0), int(c1), int(c2)
    n0, n1, n2 = volume.shape
    total = np.float32(0.0)
    for d0 in range(2):
        j0 = i0 + d0
        if j0 < 0 or j0 >= n0:
            continue
        w0 = f0 if d0 else 1 - f0
        for d1 in range(2):
            j1 = i1 + d1
            if j1 < 0 or j1 >= n1:
                continue
            w1 = f1 if d1 else 1 - f1
            for d2 in range(2):
                j2 = i2 + d2
                if j2 < 0 or j2 >= n2:
                    continue
                w2 = f2 if d2 else 1 - f2
                total += w0 * w1 * w2 * volume[j0, j1, j2]
    return total


@njit(cache=True)
def _is_bone(volume, block_max, block, q0, q1, q2, threshold, skip_below):
    """Whether the reading at q exceeds ``threshold``; a block maximum below ``skip_below``
    (a margin under it, against rounding) answers no without reading the eight corners."""
    b0 = min(max(int(np.floor(q0)) // block, 0), block_max.shape[0] - 1)
    b1 = min(max(int(np.floor(q1)) // block, 0), block_max.shape[1] - 1)
    b2 = min(max(int(np.floor(q2)) // block, 0), block_max.shape[2] - 1)
    if block_max[b0, b1, b2] < skip_below:
        return False
    return _shifted_hu(volume, q0, q1, q2) > threshold


@njit(parallel=True, cache=True)
def _bone_crossings(
    volume, block_max, block, src, span, alphas, threshold, skip_below, first, last
):
    """first[r], last[r]: the first and last sample ``k`` of ray ``r`` (at
    ``src + alphas[k] * span[r]``) whose reading exceeds ``threshold`` (both -1 where none);
    float32 throughout, like the tensor path. ``block_max``: :func:`_block_max` of ``volume``
    with blocks of ``block`` voxels."""
    p = len(alphas)
    for r in prange(len(span)):
        first[r] = -1
        last[r] = -1
        for k in range(p):
            a = alphas[k]
            q0, q1, q2 = src[0] + a * span[r, 0], src[1] + a * span[r, 1], src[2] + a * span[r, 2]
            if _is_bone(volume, block_max, block, q0, q1, q2, threshold, skip_below):
                first[r] = k
                break
        if first[r] < 0:
            continue
        for k in range(p - 1, first[r] - 1, -1):
            a = alphas[k]
            q0, q1, q2 = src[0] + a * span[r, 0], src[1] + a * span[r, 1], src[2] + a * span[r, 2]
            if _is_bone(volume, block_max, block, q0, q1, q2, threshold, skip_below):
                last[r] = k
                break
