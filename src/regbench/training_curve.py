"""A finished run's learned similarity retrained: for several step counts (does longer training
help?, :func:`training_curve`) or with other training seeds (how far apart do two trainings of
the same settings end?, :func:`training_spread`), each registered on the run's X-rays.

Run them on a validation run (``workflow/configs/validation.yaml``), not on the default test
X-rays: the curve is how the training budget is chosen.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from regbench import evaluate
from regbench.methods.base import Trace

log = logging.getLogger(__name__)


def training_curve(subject_dir: Path, variant: str, steps: list[int], n_xrays: int) -> list[dict]:
    """Rows (steps, xray_id, start, mtre_mm, seconds) for each step count and X-ray."""
    import torch

    from regbench.data.subject import load_prepared
    from regbench.methods import build_method
    from regbench.models.variants import VARIANTS
    from regbench.runner import registration_context
    from regbench.seeding import derive_seed
    from regbench.train.checkpoint import save_checkpoint
    from regbench.train.regressor import load_regressor
    from regbench.train.similarity import (
        build_similarity_model,
        similarity_settings,
        train_similarity,
        variant_config,
    )

    settings, seed_key = finished_run_settings(subject_dir, variant)
    seed = derive_seed(*seed_key)
    regressor = load_regressor(subject_dir / "models" / "regressor.pt", settings, "cpu")
    prepared = load_prepared(subject_dir / "prepared")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_steps in steps:
            s = {**settings, "similarity": {**settings["similarity"], "steps": max(1, n_steps)}}
            if VARIANTS[variant].own_section:  # SOPI, CDReg: steps of their own section
                own = settings[variant]
                s[variant] = {**own, "training": {**own["training"], "steps": max(1, n_steps)}}
            model_path = Path(tmp) / f"similarity-{variant}-{n_steps}.pt"
            if n_steps > 0:
                train_similarity(
                    prepared,
                    variant,
                    s,
                    seed,
                    model_path,
                    model_path.with_suffix(".log.csv"),
                    torch.device("cpu"),
                    regressor,
                )
            else:  # untrained: image terms and random encoders at their initial gains
                torch.manual_seed(seed)
                model = build_similarity_model(variant, variant_config(s, variant), s)
                blob = {"state_dict": model.state_dict()}
                save_checkpoint(
                    blob, {**similarity_settings(s, variant), "subject_seed": seed}, model_path
                )
            prepared, xrays, context = registration_context(
                subject_dir / "prepared",
                subject_dir / "xrays",
                subject_dir / "models" / "regressor.pt",
                model_path,
                s,
                variant,
            )
            method = build_method(variant, context)
            points = prepared.points
            for i in range(min(n_xrays, len(xrays))):
                image, gt = xrays.images[i : i + 1], xrays.poses[i].double()
                for start in ("regressor", "ground truth"):
                    trace = Trace()
                    init = (
                        context.regressor.predict(image)[0].double()
                        if start == "regressor"
                        else gt.clone()
                    )
                    pose, _ = method.refine(image, init, trace)
                    error = float(evaluate.mtre(pose.numpy()[None], gt.numpy()[None], points)[0])
                    rows.append(
                        {
                            "steps": n_steps,
                            "xray_id": xrays.ids[i],
                            "start": start,
                            "mtre_mm": error,
                            "seconds": trace.seconds[-1] if trace.seconds else float("nan"),
                        }
                    )
            done = [
                r["mtre_mm"] for r in rows if r["steps"] == n_steps and r["start"] == "regressor"
            ]
            log.info("%s, %d steps: median mTRE %.3f mm", variant, n_steps, np.median(done))
    return rows


def training_spread(subject_dir: Path, variants: list[str], repeats: int) -> list[dict]:
    """Rows (variant, training_seed, xray_id, mtre_mm): each variant's finished registration
    (training seed 0: the run's own model) and ``repeats`` retrainings with other training
    seeds, each registered on every X-ray from the regressor's start. Variants with one seed
    tag (the paper's method and its ablations) share each retraining's seed, so their
    differences stay paired."""
    import pandas as pd
    import torch

    from regbench.data.subject import load_prepared
    from regbench.errors import InputError
    from regbench.models.variants import VARIANTS
    from regbench.runner import register_all, registration_context
    from regbench.seeding import derive_seed
    from regbench.train.regressor import load_regressor
    from regbench.train.similarity import train_similarity

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"not learned similarities: {unknown} (known: {sorted(VARIANTS)})")
    prepared = load_prepared(subject_dir / "prepared")
    rows = []
    for variant in variants:
        settings, seed_key = finished_run_settings(subject_dir, variant)
        finished = subject_dir / "runs" / f"{variant}.csv"
        if not finished.is_file():
            raise FileNotFoundError(f"no finished {variant} registration: {finished} is missing")
        rows += _spread_rows(variant, 0, pd.read_csv(finished, dtype={"xray_id": str}))
        regressor = load_regressor(subject_dir / "models" / "regressor.pt", settings, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(1, repeats + 1):
                seed = derive_seed(*seed_key, "repeat", k)
                model_path = Path(tmp) / f"similarity-{variant}-{k}.pt"
                train_similarity(
                    prepared,
                    variant,
                    settings,
                    seed,
                    model_path,
                    model_path.with_suffix(".log.csv"),
                    torch.device("cpu"),
                    regressor,
                )
                subject_data, xrays, context = registration_context(
                    subject_dir / "prepared",
                    subject_dir / "xrays",
                    subject_dir / "models" / "regressor.pt",
                    model_path,
                    settings,
                    variant,
                )
                frame, _ = register_all(variant, subject_data, xrays, context)
                rows += _spread_rows(variant, k, frame)
                log.info(
                    "%s, training seed %d: mean mTRE %.3f mm", variant, k, frame.mtre_mm.mean()
                )
    return rows


def finished_run_settings(subject_dir: Path, variant: str) -> tuple[dict, tuple]:
    """The settings a finished run registered ``variant`` with, and the key of the seed its
    similarity was trained from (``train-similarity``'s: master seed, dataset, subject,
    "similarity", the variant's seed tag); retrainings extend the key."""
    from regbench.models.variants import training_seed_tag

    snapshot = subject_dir / "runs" / f"{variant}.config.json"
    if not snapshot.is_file():
        raise FileNotFoundError(f"no finished {variant} registration: {snapshot} is missing")
    settings = json.loads(snapshot.read_text())["settings"]
    key = (settings["seed"], subject_dir.parent.name, subject_dir.name, "similarity")
    return settings, (*key, training_seed_tag(variant))


def _spread_rows(variant: str, training_seed: int, frame) -> list[dict]:
    return [
        {"variant": variant, "training_seed": training_seed, "xray_id": x, "mtre_mm": float(m)}
        for x, m in zip(frame["xray_id"], frame["mtre_mm"], strict=True)
    ]
