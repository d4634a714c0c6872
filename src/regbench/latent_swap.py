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

import torch

from regbench.errors import InputError

log = logging.getLogger(__name__)


def swap_latents(
    subject_dir: Path,
    variant: str,
    geometries: Sequence[str],
    n_xrays: int,
    lm_iterations: int | None = None,
) -> list[dict]:
    """Rows (model, geometry, features, xray_id, status, mtre_mm, encoder_share) per geometry,
    encoder features "on" / "off" and X-ray: ``variant``'s trained similarity of a finished
    subject run registered from the regressor's start, as the run did, with its latent replaced
    by ``geometry`` (the model's own geometry is always among them, first).
    ``encoder_share``: the encoder part's share of the X-ray embedding's norm.
    ``lm_iterations``: both LM passes' iterations instead of the run's."""
    from regbench.methods import build_method
    from regbench.models.latent import LATENTS, make_latent
    from regbench.models.variants import VARIANTS
    from regbench.runner import register_all, registration_context
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
            n = min(n_xrays, len(xrays))
            xrays.ids, xrays.images, xrays.poses = xrays.ids[:n], xrays.images[:n], xrays.poses[:n]
            frame, _ = register_all(variant, prepared, xrays, context)
            method = build_method(variant, context)
            for i, r in frame.iterrows():
                with torch.no_grad():
                    e_x = method.residual_fn(xrays.images[i : i + 1]).e_x
                share = float(model.encoder_part(e_x).norm() / e_x.norm())
                rows.append({
                    "model": variant, "geometry": geometry, "features": features,
                    "xray_id": r["xray_id"], "status": r["status"], "mtre_mm": r["mtre_mm"],
                    "encoder_share": share,
                })  # fmt: skip
            log.info(
                "%s model, %s latent, features %s: mean mTRE %.4f mm",
                variant, geometry, features, frame["mtre_mm"].mean(),
            )  # fmt: skip
    return rows
