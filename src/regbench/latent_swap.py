"""What a comparison between latent geometries can resolve: one trained learned similarity
registered under each geometry, with its encoder features and with them switched off.

With the encoder part off, an embedding is the unit-norm image terms times one gain, so the
X-ray's and the DRR's embeddings have one norm and every geometry's distance is an increasing
function of the angle between them: the geometries share their minimiser over the pose exactly,
and what still differs between their registrations is the optimiser's path and where it stops.
That spread is the resolution of Table 3's latent rows at a given training scale. With the
features on, the same model under each geometry shows what the geometry alone moves, training
held fixed (Table 3's rows also differ by their trainings).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from regbench import evaluate
from regbench.errors import InputError

log = logging.getLogger(__name__)


def swap_latents(
    subject_dir: Path,
    variant: str,
    geometries: Sequence[str],
    n_xrays: int,
    lm_iterations: int | None = None,
    offset: tuple[float, float] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Rows (model, geometry, features, xray_id, status, mtre_init_mm, mtre_mm, encoder_share)
    per geometry, encoder features "on" / "off" and X-ray: ``variant``'s trained similarity of a
    finished subject run with its latent replaced by ``geometry`` (the model's own geometry is
    always among them, first), registered from the regressor's start as the run did or, with
    ``offset`` (deg, mm), from the truth so moved (the capture section's starts for ``seed``).
    ``encoder_share``: the encoder part's share of the X-ray embedding's norm.
    ``lm_iterations``: both LM passes' iterations instead of the run's."""
    from regbench.drift import xray_offset_start
    from regbench.methods import build_method
    from regbench.methods.base import Trace
    from regbench.models.latent import LATENTS, make_latent
    from regbench.models.variants import VARIANTS
    from regbench.runner import registration_context
    from regbench.training_curve import finished_run_settings

    if VARIANTS.get(variant) is None or VARIANTS[variant].refiner != "lm":
        lm_variants = sorted(n for n, v in VARIANTS.items() if v.refiner == "lm")
        raise InputError(f"not a learned similarity refined by LM: {variant!r} ({lm_variants})")
    unknown = [g for g in geometries if g not in LATENTS]
    if unknown:
        raise InputError(f"unknown latent geometries {unknown} (known: {sorted(LATENTS)})")
    own = VARIANTS[variant].latent  # always registered first: the reference of differences
    geometries = [own, *(g for g in geometries if g != own)]
    settings, _ = finished_run_settings(subject_dir, variant)
    if lm_iterations is not None:
        lm = {**settings["lm"], "iterations": lm_iterations, "refit_iterations": lm_iterations}
        settings = {**settings, "lm": lm}
    rows = []
    for features in ("on", "off"):
        for geometry in geometries:
            prepared, xrays, context = registration_context(
                subject_dir / "prepared",
                subject_dir / "xrays",
                subject_dir / "models" / "regressor.pt",
                subject_dir / "models" / f"similarity-{variant}.pt",
                settings,
                variant,
            )
            model = context.similarity
            if features == "off" and not model.image_terms:
                raise InputError(
                    f"{variant}'s model has no image terms (similarity.pooled_size: 0): with its "
                    "encoder features off its embedding would be empty"
                )
            model.latent = make_latent(geometry)
            if features == "off":
                with torch.no_grad():
                    model.feature_gain.zero_()
            method = build_method(variant, context)
            errors = []
            for i in tqdm(range(min(n_xrays, len(xrays))), desc=f"{geometry}, {features}"):
                image, gt = xrays.images[i : i + 1], xrays.poses[i].double()
                if offset is None:
                    result = method.register(image)
                    start, pose, status = result.trace.poses[0], result.pose, result.status
                else:
                    start = xray_offset_start(gt, seed, i, *offset)
                    pose, _ = method.refine(image, start, Trace())
                    status = "ok" if torch.isfinite(pose).all() else "failed"
                with torch.no_grad():
                    e_x = method.residual_fn(image).e_x
                error = float("nan")
                if status == "ok":
                    error = _mtre(pose, gt, prepared.points)
                errors.append(error)
                rows.append({
                    "model": variant, "geometry": geometry, "features": features,
                    "xray_id": xrays.ids[i], "status": status,
                    "mtre_init_mm": _mtre(start, gt, prepared.points), "mtre_mm": error,
                    "encoder_share": float(model.encoder_part(e_x).norm() / e_x.norm()),
                })  # fmt: skip
            log.info(
                "%s model, %s latent, features %s: mean mTRE %.4f mm",
                variant, geometry, features, float(np.nanmean(errors)),
            )  # fmt: skip
    return rows


def _mtre(pose: torch.Tensor, gt: torch.Tensor, points: np.ndarray) -> float:
    est = pose.detach().double().reshape(4, 4).numpy()
    return float(evaluate.mtre(est[None], gt.numpy()[None], points)[0])
