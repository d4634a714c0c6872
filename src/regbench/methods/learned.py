"""Registration on a learned similarity: the paper's method, its ablations, ProST-m/-t,
SOPI and CDReg.

``lm`` variants (ours-*, abl-*) minimise ``1/2 |r|^2`` with Levenberg-Marquardt, r the latent
residual between the X-ray and DRR-feature embeddings (its norm is the learned distance).
ProST-m and ProST-t descend the learned distance with SGD, then gradient NCC with SGD (ProST-m)
or CMA-ES (ProST-t): :mod:`regbench.methods.prost`. SOPI starts from its own initialiser and
descends its distance by SGD with momentum and a triangular cyclic learning rate on unit
gradient directions; CDReg descends its regressed distance with Adam (cosine-decayed
learning rates).
"""

from __future__ import annotations

import logging
import math

import torch
from diffdrr.metrics import GradientNormalizedCrossCorrelation2d

from regbench.geometry.poses import perturb, scale_translation
from regbench.methods import prost
from regbench.methods.base import Method, Trace
from regbench.methods.similarity import BorderedSimilarity
from regbench.models.imaging import Imaging, uses_imaging_model
from regbench.models.residual import LatentResidual
from regbench.models.similarity import resize_images
from regbench.models.variants import VARIANTS
from regbench.optim.first_order import descend, triangular_lr
from regbench.optim.lm import levenberg_marquardt, pose_residual

log = logging.getLogger(__name__)


class LearnedSimilarity(Method):
    def __init__(self, context, name: str):
        super().__init__(context)
        self.name = name
        self.variant = VARIANTS[name]
        self.model = context.similarity
        self.setup = context.similarity_setup
        self.imaging_model = uses_imaging_model(name, context.settings.get("similarity", {}))
        with torch.no_grad():
            self.features = self.model.features(self.setup.density)

    def initial_pose(self, image: torch.Tensor) -> torch.Tensor:
        """SOPI's own initialiser where the model has one, else the subject's regressor."""
        initialiser = getattr(self.model, "initialiser", None)
        if initialiser is None:
            return super().initial_pose(image)
        return initialiser.predict(image.to(self.features.device))[0].float().cpu()

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        residual = self.residual_fn(image)
        if self.variant.refiner in ("prost-m", "prost-t"):
            return self._prost(residual, init, image, trace)
        if self.variant.refiner == "sgd-cyclic":
            return self._sopi(residual, init, trace)
        if self.variant.refiner == "adam":
            return self._cdreg(residual, init, trace)
        if self.imaging_model:
            return self._lm_with_imaging_fit(residual, init, trace)
        return self._lm(residual, init, trace)

    def residual_fn(self, image: torch.Tensor) -> LatentResidual:
        """This X-ray's latent residual as a function of the pose (its norm: the distance)."""
        setup = self.setup
        small = resize_images(image.to(self.features.device), setup.height, setup.width)
        imaging = Imaging.start(len(small)) if self.imaging_model else None
        with torch.no_grad():
            return LatentResidual(self.model, setup, small, self.features, imaging)

    def first_order(
        self, image: torch.Tensor, init: torch.Tensor, optimizer: str, iterations: int, trace: Trace
    ) -> torch.Tensor:
        """Gradient descent or Adam on ``1/2 |r|^2`` over ``xi`` (pose = init @ exp(xi)), the
        first-order baselines of the optimiser comparison (paper's Figure 4, right)."""
        cfg = self.context.settings["optimizer_study"]
        residual = self.residual_fn(image)
        return descend(
            lambda pose: 0.5 * (residual.in_pose(pose) ** 2).sum(),
            init,
            torch.optim.Adam if optimizer == "adam" else torch.optim.SGD,
            (cfg["lr_rotation"], cfg["lr_translation"]),
            iterations,
            trace.record,
        )

    def _sopi(
        self, residual: LatentResidual, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        """SGD with momentum on SOPI's feature distance, its learning rates (deg, mm) cycling
        triangularly between ``base_lr_*`` and ``max_lr_*`` every ``half_cycle`` iterations."""
        cfg = self.context.settings["sopi"]["registration"]

        def schedule(iteration: int) -> tuple[float, float]:
            rot = triangular_lr(
                iteration - 1, cfg["base_lr_deg"], cfg["max_lr_deg"], cfg["half_cycle"]
            )
            trans = triangular_lr(
                iteration - 1, cfg["base_lr_mm"], cfg["max_lr_mm"], cfg["half_cycle"]
            )
            return math.radians(rot), trans

        pose = descend(
            lambda pose: residual.distance_in_pose(pose).sum(),
            init,
            lambda groups: torch.optim.SGD(groups, momentum=cfg["momentum"]),
            schedule(1),
            cfg["iterations"],
            trace.record,
            schedule=schedule,
            unit_gradients=True,
        )
        return pose, cfg["iterations"]

    def _cdreg(
        self, residual: LatentResidual, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        """Adam on CDReg's regressed distance, learning rates (deg, mm) decayed by a cosine."""
        cfg = self.context.settings["cdreg"]["registration"]
        n = cfg["iterations"]

        def schedule(iteration: int) -> tuple[float, float]:
            decay = 0.5 * (1 + math.cos(math.pi * (iteration - 1) / n))
            return math.radians(cfg["lr_deg"]) * decay, cfg["lr_mm"] * decay

        pose = descend(
            lambda pose: residual.distance_in_pose(pose).sum(),
            init,
            torch.optim.Adam,
            schedule(1),
            n,
            trace.record,
            schedule=schedule,
        )
        return pose, n

    def _lm(
        self,
        residual: LatentResidual,
        init: torch.Tensor,
        trace: Trace,
        offset: int = 0,
        iterations: int | None = None,
    ) -> tuple[torch.Tensor, int]:
        """LM on the residual from ``init`` (at most ``iterations``, default ``lm.iterations``);
        its iterations are recorded from ``offset + 1``."""
        cfg = self.context.settings["lm"]
        L = self.setup.characteristic_length

        def record(iteration, pose, cost, lam):
            trace.record(offset + int(iteration) + 1, pose[0])  # iteration 0: the initial pose

        result = levenberg_marquardt(
            pose_residual(residual),
            init.double(),
            jacobian=residual.linearise,
            max_iterations=iterations or cfg["iterations"],
            scale=torch.tensor([L, L, L, 1.0, 1.0, 1.0], dtype=torch.float64),
            step_tol=cfg["step_tol_mm"],
            callback=record,
        )
        return result.pose.detach(), int(result.iterations)

    def _lm_with_imaging_fit(
        self, residual: LatentResidual, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        """LM with the middle of the training domain's imaging model, the X-ray's detector blur and
        display gamma fitted at the pose it reached, then LM again from there with them
        (:mod:`regbench.models.imaging`; the trajectory goes on counting iterations)."""
        pose, first = self._lm(residual, init, trace)
        residual.fit_imaging(pose[None])
        more = self.context.settings["lm"]["refit_iterations"]
        pose, second = self._lm(residual, pose, trace, offset=first, iterations=more)
        return pose, first + second

    def _prost(
        self, residual: LatentResidual, init: torch.Tensor, image: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        """Stage 1 on the learned distance, then stage 2 on gradient NCC (ProST-m: SGD with a
        cyclic learning rate; ProST-t: CMA-ES)."""
        cfg = self.context.settings["prost"]
        L = self.setup.characteristic_length
        pose, done = prost.sgd_stage(
            lambda p: residual.in_pose(p).pow(2).sum(),  # the Euclidean latent's distance
            init,
            L,
            lambda _: cfg["lr_similarity"],
            cfg,
            cfg["switch_tol"],
            cfg["similarity_iterations"],
            trace,
        )
        own = self.context.settings[self.name]
        loss = self._gradncc_loss(image)
        if self.variant.refiner == "prost-m":
            pose, more = prost.sgd_stage(
                loss,
                pose,
                L,
                lambda it: triangular_lr(it, own["lr_min"], own["lr_max"], own["half_period"]),
                cfg,
                own["stop_tol"],
                own["iterations"],
                trace,
                done,
            )
            return pose[0], done + more
        scales = torch.tensor(
            [math.radians(own["sigma_rotation_deg"])] * 3 + [own["sigma_translation_mm"] / L] * 3,
            dtype=torch.float64,
        )
        base = pose.reshape(1, 4, 4)

        def poses(x: torch.Tensor) -> torch.Tensor:
            return perturb(base.expand(len(x), 4, 4), scale_translation(x * scales, L))

        with torch.no_grad():
            x, _, evaluations = prost.cmaes(
                lambda x: loss(poses(x)),
                6,
                1.0,
                own["population"],
                own["max_evaluations"],
                int(self.context.settings["seed"]),
            )
        best = poses(x[None])[0]
        trace.record(done + evaluations, best)
        return best, done + evaluations

    def _gradncc_loss(self, image: torch.Tensor):
        """``1 - gradient NCC`` of (N,4,4) poses against the X-ray, inside its border -> (N,)."""
        renderer = self.context.renderer
        metric = BorderedSimilarity(GradientNormalizedCrossCorrelation2d(), self.context.border_px)
        target = image.to(renderer.device)

        def loss(pose: torch.Tensor) -> torch.Tensor:
            drr = renderer.render(pose.float(), self.context.n_points)
            return (1 - metric(drr, target.expand(len(pose), *target.shape[1:]))).double()

        return loss
