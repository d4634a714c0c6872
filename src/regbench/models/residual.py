"""The learned similarity's latent residual as a function of the pose, with a fast Jacobian.

Levenberg-Marquardt needs ``r(pose)`` and ``J = dr/dxi`` at every iteration. Forward-mode
autodiff through the ray marcher and the encoders costs about 0.5 s per Jacobian on a CPU;
instead the feature images and their exact per-pixel pose Jacobian come from one pass of the
compiled projector (features are fixed during a registration), and the map from images to the
residual (image terms, encoders, latent geometry) is linearised by central differences along
the six image tangents ``d image / d xi_k``: 12 more images through the encoders in one batch,
no re-rendering. On other devices the torch projector gives the same images and Jacobian.
"""

from __future__ import annotations

import torch

from regbench.models.similarity import SimilarityGeometry, SimilarityModel

FD_STEP = 3e-3  # tangent step, relative to the image's RMS (float32 encoders)


class LatentResidual:
    """``pose (N,4,4) -> r (N,M)`` for N X-rays (one problem each), the latent residual whose
    norm is the learned distance."""

    def __init__(
        self,
        model: SimilarityModel,
        setup: SimilarityGeometry,
        xrays: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        self.model, self.setup = model, setup
        self.features = features
        self.e_x = model.embed_xray(xrays)
        constant = features.detach()
        if setup.fast_projector is not None:
            self.projector = setup.fast_projector
        else:
            self.projector = setup.projector
        self.table = self.projector.prepare(constant)

    def of_images(self, images: torch.Tensor, e_x: torch.Tensor) -> torch.Tensor:
        """(K,C,H,W) feature images, (K,D) X-ray embeddings -> (K,M) residuals (float64)."""
        e_d = self.model.embed_drr_images(images.float())
        return self.model.residual(e_x, e_d).double()

    def __call__(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose`` from the fixed features (no autograd graph)."""
        with torch.no_grad():
            images = self.projector(self.table, pose.to(self.table.dtype), self.setup.n_points)
            return self.of_images(images, self.e_x.detach().expand(len(pose), -1))

    def linearise(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r (N,M), J (N,M,6))`` at ``pose``, without autograd graph."""
        n = len(pose)
        with torch.no_grad():
            images, jac = self.projector.forward_and_jacobian(
                self.table, pose.to(self.table.dtype), self.setup.n_points
            )
            c, h, w = images.shape[1:]
            tangents = jac.reshape(n, c, h, w, 6).permute(0, 4, 1, 2, 3)  # (N,6,C,H,W)
            rms = images.pow(2).mean(dim=(1, 2, 3)).sqrt()[:, None]
            t_rms = tangents.pow(2).mean(dim=(2, 3, 4)).sqrt().clamp_min(1e-30)
            step = FD_STEP * rms / t_rms  # (N,6)
            moved = step[..., None, None, None] * tangents
            batch = torch.cat(
                [images[:, None], images[:, None] + moved, images[:, None] - moved], 1
            )
            e_x = self.e_x.detach()[:, None].expand(n, 13, -1).reshape(n * 13, -1)
            out = self.of_images(batch.reshape(n * 13, c, h, w), e_x).reshape(n, 13, -1)
            columns = (out[:, 1:7] - out[:, 7:13]) / (2 * step.double()[..., None])
            return out[:, 0], columns.transpose(1, 2)

    def in_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose``, differentiable w.r.t. the pose only (first-order optimisers)."""
        images = self.projector(self.table, pose.to(self.table.dtype), self.setup.n_points)
        return self.of_images(images, self.e_x.detach().expand(len(pose), -1))

    def with_grad(self, pose: torch.Tensor) -> torch.Tensor:
        """Residual at ``pose`` through the differentiable projector: gradients reach the
        model's parameters (features, encoders, gains) and the pose (unrolled training)."""
        e_d = self.model.embed_drr(self.setup.projector, self.features, pose, self.setup.n_points)
        return self.model.residual(self.e_x, e_d).double()

    def unrolled_jacobian(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For differentiable LM: ``r`` with its graph, ``J`` without. Terms of the step's
        derivative through ``J`` are multiplied by ``r`` and vanish at the optimum (the
        Gauss-Newton view of the converged step), so ``J`` is treated as a constant."""
        _, jac = self.linearise(pose.detach())
        return self.with_grad(pose), jac
