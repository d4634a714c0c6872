"""The learned similarity's latent residual as a function of the pose, with a fast Jacobian.

Levenberg-Marquardt needs ``r(pose)`` and ``J = dr/dxi`` at every iteration. Forward-mode
autodiff through the ray marcher and the encoders costs about 0.5 s per Jacobian on a CPU;
instead the DRR branch's images and their exact per-pixel pose Jacobian come from one pass of
the compiled projector (features are fixed during a registration), and the map from images to
the residual (image terms, encoders, latent geometry) is linearised by central differences
along the six image tangents ``d images / d xi_k``: 12 more images through the encoders in one
batch, no re-rendering. On other devices the torch projector gives the same images and Jacobian.
"""

from __future__ import annotations

import torch

from regbench.models.imaging import Imaging, compose_drr, fit_imaging, linearise_display
from regbench.models.similarity import EmbeddingSimilarity, SimilarityGeometry

FD_STEP = 3e-3  # tangent step, relative to the images' RMS (float32 encoders)


class LatentResidual:
    """``pose (N,4,4) -> r (N,M)`` for N X-rays (one problem each), the latent residual whose
    norm is the learned distance."""

    def __init__(
        self,
        model: EmbeddingSimilarity,
        setup: SimilarityGeometry,
        xrays: torch.Tensor,
        features: torch.Tensor,
        imaging: Imaging | None = None,
    ) -> None:
        self.model, self.setup = model, setup
        self.features, self.xrays = features, xrays
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.set_imaging(imaging)
        self.projector = setup.fast_projector or setup.projector
        learned = features[1:].detach()
        self.table = self.projector.prepare(learned) if len(learned) else None

    def set_imaging(self, imaging: Imaging | None) -> None:
        """Use the X-rays' imaging model ``imaging`` (None: unblurred DRR, X-ray as it is)."""
        self.imaging = imaging
        gamma = None if imaging is None else imaging.gamma
        self.e_x, self.bone = self.model.embed_xray(self.xrays, gamma)
        self._last = None

    @property
    def blur(self) -> torch.Tensor | None:
        return None if self.imaging is None else self.imaging.blur

    def fit_imaging(self, pose: torch.Tensor) -> Imaging:
        """Fit each X-ray's detector blur and display gamma at ``pose`` (N,4,4) and use them.
        They are fitted where they act, on the image terms: the multiscale NCC of the
        linearised X-ray and the blurred DRR (:func:`regbench.models.imaging.fit_imaging`;
        no encoder pass, so the grid costs a few milliseconds)."""
        with torch.no_grad():
            parts = self.setup.drr(pose)
            fitted = [
                fit_imaging(self._imaging_cost(i, parts[i : i + 1])) for i in range(len(pose))
            ]
        blur, gamma = (torch.tensor(v, dtype=torch.float64) for v in zip(*fitted, strict=True))
        imaging = Imaging(blur, gamma)
        self.set_imaging(imaging)
        return imaging

    def _imaging_cost(self, i: int, parts: torch.Tensor):
        """``(blur (K,), gamma (K,)) -> (K,)`` one minus the multiscale NCC of X-ray ``i`` and
        its DRR parts ``parts`` (1,2,H,W) at a fixed pose."""
        xray = self.xrays[i : i + 1]
        bone = self.bone.detach()[i : i + 1]

        def cost(blurs: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
            ub, bi = torch.unique(blurs, return_inverse=True)
            ug, gi = torch.unique(gammas, return_inverse=True)
            drr = compose_drr(parts.expand(len(ub), -1, -1, -1), bone.expand(len(ub)), ub)
            t_d = self.model.terms(drr)
            t_x = self.model.terms(linearise_display(xray.expand(len(ug), -1, -1, -1), ug))
            return 1 - (t_x[gi] * t_d[bi]).sum(-1)

        return cost

    def drr_channel(self, pose: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) the DRR branch's channel 0 at ``pose``: the CT's parts composed with the
        X-ray encoder's bone estimate (held constant) and the imaging model's blur. Training
        renders it alone where the learned channels are rendered with their own graph."""
        return compose_drr(self.setup.drr(pose), self.bone.detach(), self.blur)

    def images(self, pose: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) DRR branch input at ``pose`` from the fixed features; differentiable in
        the pose only."""
        drr = self.drr_channel(pose)
        if self.table is None:
            return drr
        learned = self.projector(self.table, pose.to(self.table.dtype), self.setup.n_points)
        return torch.cat([drr.to(learned.dtype), learned], dim=1)

    def images_and_jacobian(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N,C,H,W) and their pose Jacobian (N,6,C,H,W), no autograd graph. The last
        result is kept: training asks for it at the same start poses twice."""
        key = pose.detach().double()
        if self._last is not None and torch.equal(self._last[0], key):
            return self._last[1]
        result = self._images_and_jacobian(pose)
        self._last = (key.clone(), result)
        return result

    def _images_and_jacobian(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(pose)
        parts, jac = self.setup.drr_and_jacobian(pose)
        h, w = parts.shape[-2:]
        bone = self.bone.detach()
        jac = jac.reshape(n, 2, h, w, 6).permute(0, 4, 1, 2, 3).reshape(n * 6, 2, h, w)
        drr = compose_drr(parts, bone, self.blur)
        blur6 = None if self.blur is None else self.blur.repeat_interleave(6)
        tangent = compose_drr(jac, bone.repeat_interleave(6), blur6)  # linear in the parts
        tangents = [tangent.reshape(n, 6, 1, h, w).permute(0, 2, 3, 4, 1)]
        images = [drr]
        if self.table is not None:
            with torch.no_grad():
                learned, ljac = self.projector.forward_and_jacobian(
                    self.table, pose.to(self.table.dtype), self.setup.n_points
                )
            images.append(learned.to(drr.dtype))
            tangents.append(ljac.reshape(n, -1, h, w, 6).to(drr.dtype))
        return torch.cat(images, 1), torch.cat(tangents, 1).permute(0, 4, 1, 2, 3)

    def of_images(self, images: torch.Tensor, e_x: torch.Tensor) -> torch.Tensor:
        """(K,C,H,W) DRR branch input, (K,D) X-ray embeddings -> (K,M) residuals (float64)."""
        e_d = self.model.embed_drr_images(images)
        return self.model.residual(e_x, e_d).double()

    def __call__(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose`` from the fixed features (no autograd graph)."""
        with torch.no_grad():
            return self.of_images(self.images(pose), self.e_x.detach().expand(len(pose), -1))

    def in_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose``, differentiable w.r.t. the pose only (first-order optimisers)."""
        return self.of_images(self.images(pose), self.e_x.detach().expand(len(pose), -1))

    def distance_in_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """Learned distance (N,) at ``pose``, differentiable w.r.t. the pose only (the
        first-order refiners of SOPI and CDReg)."""
        e_d = self.model.embed_drr_images(self.images(pose))
        return self.model.distance(self.e_x.detach().expand(len(pose), -1), e_d)

    def linearise(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r (N,M), J (N,M,6))`` at ``pose``, without autograd graph."""
        n = len(pose)
        images, tangents = self.images_and_jacobian(pose)
        with torch.no_grad():
            rms = images.pow(2).mean(dim=(1, 2, 3)).sqrt()[:, None]
            t_rms = tangents.pow(2).mean(dim=(2, 3, 4)).sqrt().clamp_min(1e-30)
            step = FD_STEP * rms / t_rms  # (N,6)
            moved = step[..., None, None, None] * tangents
            stack = [images[:, None], images[:, None] + moved, images[:, None] - moved]
            batch = torch.cat(stack, 1).reshape(n * 13, *images.shape[1:])
            e_x = self.e_x.detach()[:, None].expand(n, 13, -1).reshape(n * 13, -1)
            out = self.of_images(batch, e_x).reshape(n, 13, -1)
            columns = (out[:, 1:7] - out[:, 7:13]) / (2 * step.double()[..., None])
            return out[:, 0], columns.transpose(1, 2)

    def with_grad(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose`` with gradients to the model's parameters (features through the
        differentiable projector, encoders, gains) and to the pose."""
        e_d = self.model.embed_drr(self.setup, self.features, pose, self.bone, self.blur)
        return self.model.residual(self.e_x, e_d).double()
