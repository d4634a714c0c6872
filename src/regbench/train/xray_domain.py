"""Training X-rays: DRRs with the test domain's gap randomised, for the regressor and the
learned similarities alike.

The test X-rays differ from the DRRs a method registers with by their bone/soft-tissue contrast
(``simulate.bone_attenuation``) and by noise, blur, gamma and collimation. A model trained on
one contrast only learns that contrast's appearance (the regressor then shows the gap as a
systematic pose bias), so every training image gets its own bone attenuation multiplier drawn
from ``augment.bone_attenuation`` and its own degradations (:func:`regbench.train.augment.augment`).

diffdrr's density is ``(A + m B) / max`` for bone multiplier ``m``, with ``A`` the soft-tissue
part (bone voxels contribute the soft-tissue floor) and ``B`` the bone HU
(:func:`density_parts`); line integrals are linear in the volume, so one two-channel render
gives the image for any ``m`` (the normalisation is a scale, which the degradation removes).
Training images are rendered with the trilinear quadrature (compiled on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from regbench.data.subject import Prepared
from regbench.models.imaging import Imaging
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.train.augment import augment

SOFT_TISSUE_HU = (-800.0, 350.0)  # diffdrr's transform_hu_to_density thresholds


def density_parts(ct: np.ndarray) -> torch.Tensor:
    """(X,Y,Z) HU -> (2,X,Y,Z): diffdrr's density at bone multiplier m is ``c (A + m B)``."""
    hu = torch.from_numpy(np.ascontiguousarray(ct)).float()
    soft = (hu > SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    bone = hu > SOFT_TISSUE_HU[1]
    floor = hu[soft].min() if bool(soft.any()) else hu.min()
    a = torch.where(bone, -floor, torch.where(soft, hu - floor, torch.zeros_like(hu)))
    b = torch.where(bone, hu, torch.zeros_like(hu))
    scale = (a + b).max().clamp_min(1e-6)
    return torch.stack([a, b]) / scale


class TrainingXrays:
    """Renders augmented training X-rays of one subject at a detector ``geometry``."""

    def __init__(
        self,
        prepared: Prepared,
        settings: dict,
        device: torch.device | str = "cpu",
        geometry: dict | None = None,
    ) -> None:
        from regbench.rendering.compiled_projector import FastProjector
        from regbench.rendering.torch_projector import FeatureProjector

        subject = Prepared(
            prepared.ct, prepared.affine, prepared.landmarks, geometry or prepared.geometry
        )
        drr = make_drr(subject, 1.0, "trilinear", device)
        parts = density_parts(prepared.ct).to(drr.density.device)
        compiled = drr.density.device.type == "cpu"
        projector_class = FastProjector if compiled else FeatureProjector
        self.projector = projector_class.from_drr(drr).to(drr.density.device)
        self.volume = self.projector.prepare(parts)
        self.n_points = int(settings["render"]["n_points"])
        self.bone_range = tuple(float(v) for v in settings["augment"]["bone_attenuation"])
        self.device = drr.density.device

    def parts(self, poses: torch.Tensor) -> torch.Tensor:
        """(N,4,4) poses -> (N,2,H,W) soft-tissue and bone line integrals, from which the image
        of any bone multiplier is composed (:func:`compose`; degraded by :meth:`degrade`)."""
        with torch.no_grad():
            return self.projector(self.volume, poses.to(self.device), self.n_points)

    def degrade(
        self, parts: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, Imaging]:
        """Rendered :meth:`parts` -> X-ray-like images (N,1,H,W), each with its own bone
        multiplier and degradations drawn with ``generator``, the multipliers (N,) and the
        images' imaging model (detector blur, display gamma)."""
        lo, hi = self.bone_range
        bone = lo + (hi - lo) * torch.rand(len(parts), generator=generator, dtype=torch.float64)
        images, imaging = augment(compose(parts, bone), generator)
        return images, bone, imaging

    def sample(self, poses: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N,4,4) poses -> (N,1,H,W) X-ray-like images, each with its own bone multiplier
        and degradations drawn with ``generator``."""
        return self.sample_with_domain(poses, generator)[0]

    def sample_with_domain(
        self, poses: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, Imaging]:
        """:meth:`sample`, the (N,) bone multipliers drawn for the images and their imaging
        model (detector blur, display gamma)."""
        return self.degrade(self.parts(poses), generator)


def compose(parts: torch.Tensor, bone: torch.Tensor) -> torch.Tensor:
    """(N,2,H,W) rendered parts, (N,) bone multipliers -> (N,1,H,W) float32 line integrals on
    the CPU."""
    bone = bone.to(parts)[:, None, None, None]
    return (parts[:, :1] + bone * parts[:, 1:2]).float().cpu()
