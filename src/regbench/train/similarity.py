"""Per-subject training of a learned similarity: gradient matching and unrolled LM.

For a ground-truth pose T_gt and a start pose T (the initialiser's estimate on the training
X-ray, or a pose near the truth), two losses:

* gradient matching (ProST's idea): the pose gradient of the learned distance,
  g = ds/dxi at xi = 0 (T(xi) = T @ exp(xi)), is pushed towards the gradient of the true
  pose distance g* = d(1/2 d(T(xi), T_gt)^2)/dxi (se(3) or SO(4)). The variant's ``loss``
  says how: ``"matching"`` matches the directions of the rotational and translational parts
  only (ProST MICCAI 2020, ``train.py``; ours), ``"geodesic"`` the vectors themselves, by their
  squared SE(3) geodesic distance in ProST's coordinates (ProST TMI 2023, ``loss_geodesic.py``:
  :func:`geodesic_gradient_loss`);
* the paper's differentiable Levenberg-Marquardt (LM-refined variants only; ProST has no such
  loss): a few LM steps on the learned residual from T, kept in the graph, and the distance of
  their result to T_gt. Gradient directions alone do not pin the residual's zero at the truth;
  this loss does.

Training X-rays carry the test domain's gap randomised (:mod:`regbench.train.xray_domain`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_params, carm_pose, hat, perturb, scale_translation
from regbench.geometry.priors import PosePrior
from regbench.geometry.so4 import rotation_angle_sq
from regbench.geometry.targets import pose_distance_mm, training_target
from regbench.models.imaging import uses_imaging_model
from regbench.models.regressor import PoseRegressor
from regbench.models.residual import LatentResidual
from regbench.models.similarity import (
    EmbeddingSimilarity,
    SimilarityGeometry,
    SimilarityModel,
    resize_images,
)
from regbench.models.variants import VARIANTS
from regbench.optim.lm import damped_step, levenberg_marquardt, pose_residual
from regbench.train.checkpoint import TrainingState, load_trained

log = logging.getLogger(__name__)


def similarity_settings(settings: dict, variant: str) -> dict:
    """The part of the config a similarity model depends on (its checkpoint fingerprint)."""
    keys = ("seed", "prior", "render", "similarity", "geometry", "augment", "regressor")
    blob = {**{k: settings[k] for k in keys}, "variant": variant}
    if VARIANTS[variant].own_section:
        blob[variant] = {"training": settings[variant]["training"]}
    return blob


def variant_config(settings: dict, variant: str) -> dict:
    """The training keys of ``variant``: the ``similarity`` section, overridden by the
    ``training`` part of the method's own section (SOPI, CDReg) where it has one."""
    own = settings[variant]["training"] if VARIANTS[variant].own_section else {}
    return {**settings["similarity"], **own}


def build_similarity_model(
    variant: str, cfg: dict, settings: dict | None = None
) -> EmbeddingSimilarity:
    """An untrained model of ``variant`` with the sizes of ``cfg`` (:func:`variant_config`);
    SOPI and CDReg also read ``settings`` (the render's bone multiplier, SOPI's initialiser
    architecture and prior)."""
    kind = VARIANTS[variant].model
    if kind != "latent":
        if settings is None:
            raise ValueError(f"building a {variant} model needs the full settings")
        bone = float(settings["render"]["bone_attenuation"])
        if kind == "sopi":
            from regbench.models.sopi import SopiModel

            clinical = PosePrior.from_config(settings["prior"])
            initialiser = PoseRegressor(settings["regressor"]["backbone"], clinical)
            return SopiModel(VARIANTS[variant], cfg["width"], bone, initialiser)
        from regbench.models.cdreg import CdregModel

        return CdregModel(
            VARIANTS[variant],
            cfg["channels"],
            cfg["width"],
            cfg["low_pass_px"],
            cfg["inn_layers"],
            cfg["head_cells"],
            cfg["head_hidden"],
            bone,
            cfg["matched_init"],
        )
    return SimilarityModel(
        VARIANTS[variant],
        cfg["channels"],
        cfg["embed_dim"],
        cfg["encoder"],
        cfg["pooled_size"],
        cfg["crop_px"],
        cfg["patch_px"],
        cfg["patch_stride_px"],
    )


def direction_loss(g: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over the batch of |u(g_rot) - u(g*_rot)|^2 + |u(g_trans) - u(g*_trans)|^2."""
    loss = 0.0
    for part in (slice(0, 3), slice(3, 6)):
        a, b = g[:, part], target[:, part]
        a = a / (a.norm(dim=-1, keepdim=True) + eps)
        b = b / (b.norm(dim=-1, keepdim=True) + eps)
        loss = loss + ((a - b) ** 2).sum(dim=-1)
    return loss.mean()


def geodesic_gradient_loss(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ProST-t's loss: mean over the batch of the squared SE(3) geodesic distance between the
    gradient vectors ``g`` and ``target`` (N,6), each read as a pose (rotation vector,
    translation): ``theta(exp(g_w)^T exp(t_w))^2 + |g_v - t_v|^2``, geomstats' left-canonical
    metric in vector form (the product metric, as :func:`regbench.geometry.so4.se3_distance_sq`).
    Unlike :func:`direction_loss` it matches magnitudes too, so the learned similarity's gradient
    is the geodesic one and plain gradient descent on it has a meaningful step."""
    rot_g = torch.linalg.matrix_exp(hat(g[:, :3]))
    rot_t = torch.linalg.matrix_exp(hat(target[:, :3]))
    angle_sq = rotation_angle_sq(rot_g.mT @ rot_t)
    return (angle_sq + ((g[:, 3:] - target[:, 3:]) ** 2).sum(-1)).mean()


def sample_starts(
    pose_gt: torch.Tensor,
    initial: torch.Tensor,
    cfg: dict,
    generator: torch.Generator,
) -> torch.Tensor:
    """Start poses as registration meets them: the initialiser's own estimates ``initial``
    (its actual error distribution), a ``near_truth_fraction`` of them replaced by the truth
    moved by a small Gaussian step in the C-arm parameterization (so training also sees, and
    keeps, the minimum at the truth)."""
    n = len(pose_gt)
    rot, trans = carm_params(pose_gt)
    z = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    rot = rot + z[:, :3] * math.radians(cfg["near_truth_rotation_deg"])
    trans = trans + z[:, 3:] * cfg["near_truth_translation_mm"]
    near = torch.rand(n, generator=generator, dtype=torch.float64) < cfg["near_truth_fraction"]
    return torch.where(near[:, None, None], carm_pose(rot, trans), initial.double())


def drr_branch_images(
    residual: LatentResidual, start: torch.Tensor, fixed: torch.Tensor | None = None
) -> torch.Tensor:
    """The DRR branch's input (N,C,H,W) at ``start``: the DRR channel of ``fixed`` (rendered
    alone when not given, a constant) and the learned channels with their graph to the volume
    network; it requires grad even without learned channels (identity volume)."""
    if fixed is None:
        with torch.no_grad():
            fixed = residual.drr_channel(start)
    learned = residual.setup.feature_images(residual.features, start)
    images = torch.cat([fixed[:, :1].to(learned.dtype), learned], dim=1)
    if not images.requires_grad:
        images.requires_grad_(True)
    return images


def matching_loss(
    residual: LatentResidual, start: torch.Tensor, pose_gt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-matching loss and the learned distances at the start poses.

    ``g = ds/dxi = (d images/d xi)^T ds/d images``: the images' pose Jacobian comes from the
    compiled projector (a constant of the loss), ``ds/d images`` is differentiated twice
    through the encoders and image terms; so the loss reaches the volume network through the
    feature images' values, the encoders and gains through the gradient itself. Increments are
    the raw camera-frame right perturbations of the start pose; each target
    (:func:`regbench.geometry.targets.training_target`) is the gradient of its paper's distance
    in its paper's frame, in those same increments.
    """
    model, setup = residual.model, residual.setup
    fixed, tangents = residual.images_and_jacobian(start)  # (N,C,H,W), (N,6,C,H,W)
    images = drr_branch_images(residual, start, fixed)
    distance = model.distance(residual.e_x, model.embed_drr_images(images))
    (ds,) = torch.autograd.grad(distance.sum(), images, create_graph=True)
    g = torch.einsum("nkchw,nchw->nk", tangents.to(ds.dtype), ds)
    L = setup.characteristic_length
    target = training_target(start, pose_gt, L, model.variant.target)
    if model.variant.loss == "geodesic":
        loss = geodesic_gradient_loss(
            scale_translation(g.double(), L), scale_translation(target.double(), L)
        )
        return loss, distance.detach()
    return direction_loss(g.double(), target.double()), distance.detach()


def unrolled_lm_loss(
    residual: LatentResidual, start: torch.Tensor, pose_gt: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's differentiable LM in training: ``steps`` Levenberg-Marquardt iterations on
    the learned residual from ``start``, and the distance (se(3) or SO(4), as the variant's
    target, in mm-like units) of their result to the truth. Returns the loss and the final
    distances (N,).

    The last iteration is differentiated (truncated backpropagation): at the optimum the
    implicit function theorem gives the result's sensitivity as ``-(J^T J)^-1 J^T dr/dtheta``,
    exactly what differentiating the last step gives with the pose before it and ``J`` held
    constant; the earlier iterations only bring the pose there.
    """
    L = residual.setup.characteristic_length
    scale = torch.tensor([L, L, L, 1.0, 1.0, 1.0], dtype=torch.float64)
    pose, lam = start.double(), torch.full((len(start),), 1e-3, dtype=torch.float64)
    if steps > 1:
        result = levenberg_marquardt(
            pose_residual(residual),
            pose,
            jacobian=residual.linearise,
            max_iterations=steps - 1,
            scale=scale,
            step_tol=1e-6,
        )
        pose, lam = result.pose.detach(), result.lambdas[-1]
    if steps > 0:
        _, jac = residual.linearise(pose)
        pose = perturb(pose, damped_step(residual.with_grad(pose), jac, lam, scale))
    distance = pose_distance_mm(pose, pose_gt.double(), L, residual.model.variant.target)
    return distance.mean(), distance.detach()


def train_similarity(
    prepared: Prepared,
    variant: str,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
    regressor: PoseRegressor,
) -> SimilarityModel:
    """Train one variant on one subject and write ``out``, ``log_csv`` and a config snapshot;
    ``regressor`` (the subject's initialiser) gives the training starts."""
    setup = SimilarityGeometry(prepared, settings, device)
    return run_similarity_training(
        lambda generator: setup, variant, settings, seed, out, log_csv, device, regressor
    )


def run_similarity_training(
    setup_for_step: Callable[[torch.Generator], SimilarityGeometry],
    variant: str,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
    regressor: PoseRegressor,
) -> EmbeddingSimilarity:
    """The training loop; each step's losses are :func:`step_losses`'. ``setup_for_step(generator)``
    is the subject of a step (the one subject, or one drawn per step with the run's generator
    when patient-agnostic). SOPI's initialiser starts from ``regressor``'s weights and trains at
    its own learning rate."""
    cfg = variant_config(settings, variant)
    fp_settings = {**similarity_settings(settings, variant), "subject_seed": seed}
    train_prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_similarity_model(variant, cfg, settings).to(device)
    groups = [{"params": [p for n, p in model.named_parameters() if not _initialiser(n)]}]
    if hasattr(model, "initialiser"):
        model.initialiser.load_state_dict(regressor.state_dict())
        groups.append({"params": model.initialiser.parameters(), "lr": cfg["initialiser_lr"]})
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)
    regressor.eval()

    modelled = uses_imaging_model(variant, cfg)

    def step_loss() -> tuple[torch.Tensor, str]:
        setup = setup_for_step(generator)
        pose_gt = carm_pose(*train_prior.sample_params(cfg["batch_size"], generator))
        xrays, bone, imaging = setup.training_xrays().sample_with_domain(pose_gt, generator)
        xrays = xrays.to(device)
        detector = setup.prepared.geometry  # the regressor sees X-rays at their own size
        with torch.no_grad():
            initial = regressor.predict(
                resize_images(xrays, int(detector["height"]), int(detector["width"]))
            )
        start = sample_starts(pose_gt, initial.cpu(), cfg, generator)
        # One X-ray encoder pass and one projection of the start poses serve every loss.
        residual = LatentResidual(
            model, setup, xrays, model.features(setup.density), imaging if modelled else None
        )
        terms = step_losses(residual, start, pose_gt, xrays, bone, cfg)
        total = sum(weight * value for weight, value in terms.values())
        parts = ", ".join(f"{name} {value.item():.4f}" for name, (_, value) in terms.items())
        return total, f" ({parts})"

    state.run(step_loss, cfg, out, log, variant, clip_norm=10.0)
    state.finish(out, log_csv, {"variant": variant})
    return model


def step_losses(
    residual: LatentResidual,
    start: torch.Tensor,
    pose_gt: torch.Tensor,
    xrays: torch.Tensor,
    bone: torch.Tensor,
    cfg: dict,
) -> dict[str, tuple[float, torch.Tensor]]:
    """A training step's ``{name: (weight, loss)}`` for the model's variant:

    * this paper's models and ProST: gradient matching (ProST-t: its geodesic form), the
      unrolled LM for LM-refined variants only (distance to the truth in mm, weight
      ``lm_loss_weight``), for those too the encoder features' mismatch at the true pose
      (:func:`truth_loss`, ``truth_loss_weight``), and the X-ray encoder's bone-contrast estimate
      against the training X-ray's own multiplier (log-squared error,
      ``contrast_loss_weight``);
    * SOPI: gradient matching and its initialiser's loss (:mod:`regbench.train.sopi`,
      ``initialiser_weight``);
    * CDReg: the convex-target regression and the decomposition loss
      (:mod:`regbench.train.cdreg`, ``decomposition_weight``).
    """
    model = residual.model
    variant = model.variant
    if variant.loss == "convex":
        return _convex_losses(residual, start, pose_gt, cfg)
    terms = {"matching": (1.0, matching_loss(residual, start, pose_gt)[0])}
    if variant.model == "sopi":
        from regbench.train.sopi import initialiser_loss

        loss = initialiser_loss(
            model.initialiser, residual.setup, xrays, pose_gt, bone, cfg["ncc_weight"]
        )
        terms["initialiser"] = (cfg["initialiser_weight"], loss)
        return terms
    # ProST's training has no optimiser in it: the unrolled LM is for "lm" refiners only
    if variant.refiner == "lm" and cfg["lm_loss_weight"] > 0 and cfg["unroll_steps"] > 0:
        lm_loss, _ = unrolled_lm_loss(residual, start, pose_gt, cfg["unroll_steps"])
        terms["unrolled LM"] = (cfg["lm_loss_weight"], lm_loss)
    if variant.refiner == "lm" and cfg["truth_loss_weight"] > 0:
        terms["truth"] = (cfg["truth_loss_weight"], truth_loss(residual, pose_gt))
    estimate = residual.bone
    contrast = ((estimate.log() - bone.to(estimate).log()) ** 2).mean()
    terms["contrast"] = (cfg["contrast_loss_weight"], contrast)
    return terms


def truth_loss(residual: LatentResidual, pose_gt: torch.Tensor) -> torch.Tensor:
    """Mean relative mismatch ``|f_x - f_d|^2 / (|f_x|^2 + |f_d|^2)`` of the encoder features
    of each training X-ray and of the DRR branch at its true pose. Where they differ, their
    pose gradient pulls the residual's minimum off the truth; the ratio is blind to the
    feature gain, so the loss cannot be met by switching the features off."""
    model = residual.model
    e_d = model.embed_drr_images(drr_branch_images(residual, pose_gt))
    f_x, f_d = model.encoder_part(residual.e_x), model.encoder_part(e_d)
    mismatch = ((f_x - f_d) ** 2).sum(-1)
    return (mismatch / ((f_x**2).sum(-1) + (f_d**2).sum(-1) + 1e-12)).mean()


def _convex_losses(
    residual: LatentResidual, start: torch.Tensor, pose_gt: torch.Tensor, cfg: dict
) -> dict[str, tuple[float, torch.Tensor]]:
    from regbench.train.cdreg import convex_regression_loss, decomposition_loss

    model = residual.model
    e_d = model.embed_drr_images(drr_branch_images(residual, start))
    L = residual.setup.characteristic_length
    d = pose_distance_mm(start.double(), pose_gt.double(), L, model.variant.target)
    estimates = model.branch_distances(residual.e_x, e_d)
    (low_x, high_x), (low_d, high_d) = model.split(residual.e_x), model.split(e_d)
    return {
        "convex": (1.0, convex_regression_loss(estimates, d, cfg["convex_scale_mm"])),
        "decomposition": (
            cfg["decomposition_weight"],
            decomposition_loss(low_x, high_x, low_d, high_d),
        ),
    }


def _initialiser(name: str) -> bool:
    return name.startswith("initialiser.")


def load_similarity(path: str | Path, variant: str, settings: dict, device) -> EmbeddingSimilarity:
    """Load a trained similarity model; refuse one trained for other settings or variant."""
    blob = load_trained(path, similarity_settings(settings, variant), f"{variant} similarity model")
    model = build_similarity_model(variant, variant_config(settings, variant), settings)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
