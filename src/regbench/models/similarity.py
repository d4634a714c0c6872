"""Learned similarity (the paper's core): volume features -> DRR features -> encoders -> latent.

X-ray and DRR features are embedded by two small CNN-Transformer encoders (timm) and compared in
a latent geometry (spherical geodesic, Euclidean or Poincare ball). The DRR branch renders the
C-channel feature volume along the detector rays with :class:`regbench.projector.FeatureProjector`,
which is differentiable twice, as gradient-matching training requires.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from regbench.models.latent import make_latent
from regbench.models.variants import Variant
from regbench.models.volume import build_volume_net
from regbench.projector import FeatureProjector
from regbench.render import standardize


class SimilarityModel(torch.nn.Module):
    """Embeds X-rays and DRR features; their latent distance is the learned similarity.

    Each embedding is ``[a * pooled image, b * encoder features]``: the standardised image
    average-pooled to ``pooled_size``^2 (the DRR's density channel on the DRR side) next to the
    CNN-Transformer's output, with learned gains a, b (b starts small). So the untrained
    spherical distance is about arccos(NCC) of the pooled images, which already points towards
    the truth, and training reshapes it. This residual path is ours (CPU-sized training budgets
    learn little from scratch); ``pooled_size: 0`` gives the paper's plain encoders.
    """

    def __init__(
        self,
        variant: Variant,
        channels: int,
        embed_dim: int,
        encoder: str,
        pooled_size: int = 0,
        crop_px: int = 0,
    ):
        super().__init__()
        self.variant = variant
        self.crop_px = int(crop_px)
        self.pooled_size = int(pooled_size)
        self.image_gain = torch.nn.Parameter(torch.tensor(1.0))
        self.feature_gain = torch.nn.Parameter(torch.tensor(0.1 if pooled_size else 1.0))
        self.volume_net = build_volume_net(variant.volume, channels)
        drr_channels = self.volume_net.channels
        self.encoder_xray = timm.create_model(
            encoder, pretrained=False, num_classes=embed_dim, in_chans=1
        )
        self.encoder_drr = timm.create_model(
            encoder, pretrained=False, num_classes=embed_dim, in_chans=drr_channels
        )
        self.latent = make_latent(variant.latent)

    def features(self, density: torch.Tensor) -> torch.Tensor:
        """(X,Y,Z) density -> (C,X,Y,Z) feature volume."""
        return self.volume_net(density)

    def standardize_inside(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise on the inner region and zero a ``crop_px`` border: a collimator edge is
        not anatomy (see :class:`regbench.methods.similarity.BorderedSimilarity`). The image
        keeps its size, as the encoders need it."""
        c = self.crop_px
        if c <= 0:
            return standardize(images)
        return F.pad(standardize(images[..., c:-c, c:-c]), (c, c, c, c))

    def embed_xray(self, images: torch.Tensor) -> torch.Tensor:
        images = self.standardize_inside(images)
        return self._embed(images, self.encoder_xray(images))

    def embed_drr(
        self, projector: FeatureProjector, features: torch.Tensor, pose: torch.Tensor, n_points: int
    ) -> torch.Tensor:
        drr = self.standardize_inside(projector(features, pose.to(features.dtype), n_points))
        return self._embed(drr[:, :1], self.encoder_drr(drr))

    def _embed(self, image: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        learned = self.feature_gain * encoded / encoded.shape[-1] ** 0.5
        if not self.pooled_size:
            return learned
        pooled = F.adaptive_avg_pool2d(image, self.pooled_size).flatten(1)
        pooled = standardize(pooled[:, None, None, :])[:, 0, 0] / pooled.shape[-1] ** 0.5
        return torch.cat([self.image_gain * pooled, learned], dim=-1)

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return self.latent.distance(e_x, e_d)

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return self.latent.residual(e_x, e_d)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average X-rays down to the similarity model's detector size."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="area")


def scaled_geometry(geometry: dict, height: int) -> dict:
    """The same detector (same field of view) sampled with ``height`` rows."""
    factor = int(geometry["height"]) / height
    return {
        **geometry,
        "height": int(height),
        "width": max(1, round(int(geometry["width"]) / factor)),
        "delx": float(geometry["delx"]) * factor,
        "dely": float(geometry["dely"]) * factor,
    }


class SimilarityGeometry:
    """What a similarity model renders with for one subject.

    ``xray_drr`` renders X-ray-like training images at the model's detector size; ``projector``
    renders feature volumes on a CT coarsened by ``volume_stride`` (the voxel networks' input),
    whose normalised density is ``density``.
    """

    def __init__(self, prepared, settings: dict, device: torch.device | str = "cpu"):
        from regbench.render import Prepared, make_drr

        cfg = settings["similarity"]
        render_cfg = settings["render"]
        geometry = scaled_geometry(prepared.geometry, cfg["image_size"])
        small = Prepared(prepared.ct, prepared.affine, prepared.landmarks, geometry)
        self.xray_drr = make_drr(small, render_cfg["bone_attenuation"], "trilinear", device)
        coarse_ct, coarse_affine = coarsen(prepared.ct, prepared.affine, cfg["volume_stride"])
        coarse = Prepared(coarse_ct, coarse_affine, prepared.landmarks, geometry)
        coarse_drr = make_drr(coarse, render_cfg["bone_attenuation"], "trilinear", device)
        self.projector = FeatureProjector.from_drr(coarse_drr).to(device)
        self.density = coarse_drr.density.float()
        self.n_points = int(cfg["n_points"])
        self.height, self.width = int(geometry["height"]), int(geometry["width"])
        self.characteristic_length = float(
            cfg["characteristic_length_mm"] or float(prepared.geometry["sdd"]) / 2
        )


def coarsen(ct, affine, stride: int):
    """Average ``stride``^3 blocks of the CT; the affine maps new voxel centres to the world."""
    import numpy as np

    if stride <= 1:
        return ct, affine
    volume = torch.from_numpy(np.ascontiguousarray(ct))[None, None]
    pooled = F.avg_pool3d(volume, stride, stride, ceil_mode=True)[0, 0].numpy()
    scale = np.diag([stride, stride, stride, 1.0])
    scale[:3, 3] = (stride - 1) / 2
    return pooled, affine @ scale
