"""Learned similarity (the paper's core): volume features -> DRR features -> encoders -> latent.

X-ray and DRR features are embedded by two small CNN-Transformer encoders (timm) and compared in
a latent geometry (spherical geodesic, Euclidean or Poincare ball). The DRR branch renders the
C-channel feature volume along the detector rays with :class:`regbench.projector.FeatureProjector`
(differentiable twice, as gradient-matching training requires) or, when the features are fixed
(registration), with the compiled :class:`regbench.fastproject.FastProjector`.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from regbench.models.latent import make_latent
from regbench.models.variants import Variant
from regbench.models.volume import build_volume_net
from regbench.models.zscores import multiscale_scores
from regbench.projector import FeatureProjector
from regbench.render import standardize


class SimilarityModel(torch.nn.Module):
    """Embeds X-rays and DRR features; their latent distance is the learned similarity.

    Each embedding is ``[a * image terms, b * encoder features]`` with learned gains a, b:

    * image terms (ours, ``pooled_size`` not 0): unit-norm scaled z-scores of the standardised
      image (the DRR's density channel on the DRR side), of the whole image and of every
      ``patch_px`` square (:func:`regbench.models.zscores.multiscale_scores`), at the
      similarity's full resolution (``pooled_size: null``) or average-pooled to
      ``pooled_size``^2. Their dot product is DiffPose's multiscale NCC, so the untrained
      spherical distance is about ``arccos(mNCC)``, whose minimum is at the truth;
    * encoder features: the CNN-Transformer's output over ``sqrt(embed_dim)``; ``b`` starts at
      0.1 with image terms (training reshapes the distance from there) and at 1 without.

    ``pooled_size: 0`` gives the paper's plain encoders. A ``crop_px`` border is left out of both
    (collimator edges).
    """

    def __init__(
        self,
        variant: Variant,
        channels: int,
        embed_dim: int,
        encoder: str,
        pooled_size: int | None = None,
        crop_px: int = 0,
        patch_px: int = 0,
    ):
        super().__init__()
        self.variant = variant
        self.crop_px = int(crop_px)
        self.pooled_size = pooled_size
        self.image_terms = pooled_size is None or int(pooled_size) > 0
        self.patch_px = int(patch_px)
        self.image_gain = torch.nn.Parameter(torch.tensor(1.0))
        self.feature_gain = torch.nn.Parameter(torch.tensor(0.1 if self.image_terms else 1.0))
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

    def _inside(self, images: torch.Tensor) -> torch.Tensor:
        c = self.crop_px
        return images[..., c:-c, c:-c] if c > 0 else images

    def standardize_inside(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise on the inner region and zero a ``crop_px`` border: a collimator edge is
        not anatomy. The image keeps its size, as the encoders need it."""
        c = self.crop_px
        if c <= 0:
            return standardize(images)
        return F.pad(standardize(self._inside(images)), (c, c, c, c))

    def embed_xray(self, images: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) X-rays at the similarity's detector size -> (N,D) embeddings."""
        inputs = self.standardize_inside(images)
        return self._embed(images, self.encoder_xray(inputs))

    def embed_drr_images(self, drr: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) rendered feature images -> (N,D) embeddings."""
        return self._embed(drr[:, :1], self.encoder_drr(self.standardize_inside(drr)))

    def embed_drr(
        self, projector: FeatureProjector, features: torch.Tensor, pose: torch.Tensor, n_points: int
    ) -> torch.Tensor:
        """Render ``features`` at ``pose`` (N,4,4) and embed the images."""
        return self.embed_drr_images(projector(features, pose.to(features.dtype), n_points))

    def _embed(self, image: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        learned = self.feature_gain * encoded / encoded.shape[-1] ** 0.5
        if not self.image_terms:
            return learned
        inner = self._inside(image)
        if self.pooled_size:
            inner = F.adaptive_avg_pool2d(inner, int(self.pooled_size))
        terms = multiscale_scores(inner.to(learned.dtype), self.patch_px)
        return torch.cat([self.image_gain * terms, learned], dim=-1)

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

    ``projector`` renders feature volumes on the CT coarsened by ``volume_stride`` (1: the
    prepared spacing), whose normalised density is ``density``, at the similarity's detector
    size (``image_size``; ``null``: the X-rays' rows). :meth:`training_xrays` renders
    augmented training X-rays at that size (built on first use: registration never needs it).
    """

    def __init__(self, prepared, settings: dict, device: torch.device | str = "cpu"):
        from regbench.render import Prepared, make_drr

        cfg = settings["similarity"]
        render_cfg = settings["render"]
        self.prepared, self.settings, self.device = prepared, settings, device
        rows = cfg["image_size"] or int(prepared.geometry["height"])
        self.geometry = scaled_geometry(prepared.geometry, rows)
        coarse_ct, coarse_affine = coarsen(prepared.ct, prepared.affine, cfg["volume_stride"])
        coarse = Prepared(coarse_ct, coarse_affine, prepared.landmarks, self.geometry)
        coarse_drr = make_drr(coarse, render_cfg["bone_attenuation"], "trilinear", device)
        self.projector = FeatureProjector.from_drr(coarse_drr).to(device)
        self.fast_projector = None
        if coarse_drr.density.device.type == "cpu":
            from regbench.fastproject import FastProjector

            self.fast_projector = FastProjector.from_drr(coarse_drr)
        self.density = coarse_drr.density.float()
        self.n_points = int(cfg["n_points"] or render_cfg["n_points"])
        self.height, self.width = int(self.geometry["height"]), int(self.geometry["width"])
        self.characteristic_length = float(
            cfg["characteristic_length_mm"] or float(prepared.geometry["sdd"]) / 2
        )
        self._training_xrays = None

    def training_xrays(self):
        """:class:`regbench.train.xray_domain.TrainingXrays` at the similarity's detector."""
        if self._training_xrays is None:
            from regbench.train.xray_domain import TrainingXrays

            self._training_xrays = TrainingXrays(
                self.prepared, self.settings, self.device, self.geometry
            )
        return self._training_xrays


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
