"""Run one method on every X-ray of a subject and score it against the ground truth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from regbench import evaluate
from regbench.data.subject import Prepared
from regbench.data.xrays import XraySet
from regbench.errors import InputError
from regbench.methods import build_method
from regbench.methods.base import Context, Result, Trace
from regbench.tables import RUN_CSV_COLUMNS, matrix_columns

log = logging.getLogger(__name__)

TRAJECTORY_COLUMNS = ["xray_id", "method", "iteration", "seconds", "mtre_mm"]


def register_all(
    method_name: str, prepared: Prepared, xrays: XraySet, context: Context
) -> tuple[pd.DataFrame, pd.DataFrame]:
    method = build_method(method_name, context)
    points = prepared.points
    rows, traj = [], []
    for i in tqdm(range(len(xrays)), desc=method_name, mininterval=5):
        xray_id, gt = xrays.ids[i], xrays.poses[i].numpy()
        result = _register_one(method, xrays.images[i : i + 1], xray_id)
        trace_poses = np.stack([p.numpy() for p in result.trace.poses])
        trace_mtre = evaluate.mtre(trace_poses, gt[None].repeat(len(trace_poses), 0), points)
        traj += [
            {"xray_id": xray_id, "method": method_name, "iteration": it, "seconds": s, "mtre_mm": m}
            for it, s, m in zip(
                result.trace.iterations, result.trace.seconds, trace_mtre, strict=True
            )
        ]
        rows.append(_score(method_name, xray_id, result, trace_poses[0], gt, prepared))
        log.info("%s %s: %s mTRE %.3f mm", method_name, xray_id, result.status, rows[-1]["mtre_mm"])
    return pd.DataFrame(rows, columns=list(RUN_CSV_COLUMNS)), pd.DataFrame(
        traj, columns=TRAJECTORY_COLUMNS
    )


def _register_one(method, image: torch.Tensor, xray_id: str) -> Result:
    """A method that raises on one X-ray fails that X-ray, not the whole run."""
    try:
        return method.register(image)
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        log.exception("X-ray %s: %s failed", xray_id, method.name)
        trace = Trace()
        trace.record(0, torch.full((4, 4), float("nan")))
        return Result(trace.poses[0], 0, "failed", trace, str(exc))


def _score(method_name, xray_id, result: Result, init, gt, prepared: Prepared) -> dict:
    est = result.pose.numpy()
    g = prepared.geometry
    pts = prepared.points
    mrpe = float(evaluate.mrpe(est[None], gt[None], pts, g)[0])
    row = {
        "xray_id": xray_id,
        "method": method_name,
        "status": result.status,
        "seconds": result.trace.seconds[-1],
        "iterations": result.iterations,
        "mtre_init_mm": float(evaluate.mtre(init[None], gt[None], pts)[0]),
        "mtre_mm": float(evaluate.mtre(est[None], gt[None], pts)[0]),
        "mrpe_mm": mrpe,
        "legacy_mrpe": float(evaluate.legacy_diffpose_mrpe(mrpe, g)),
        "rot_err_deg": float(evaluate.rotation_error_deg(est[None], gt[None])[0]),
        "trans_err_mm": float(evaluate.translation_error_mm(est[None], gt[None])[0]),
    }
    row.update(zip(matrix_columns("init"), init.reshape(-1), strict=True))
    row.update(zip(matrix_columns("est"), est.reshape(-1), strict=True))
    return row


OPTIMIZERS = ("LM", "Adam", "gradient descent")


def optimizer_study(
    prepared: Prepared, xrays: XraySet, context: Context, n_xrays: int, iterations: int
) -> pd.DataFrame:
    """LM vs Adam vs gradient descent on the same learned similarity (ours-so4), same starts.

    Returns trajectory rows (``method`` holds the optimiser) for the convergence figure.
    """
    method = build_method("ours-so4", context)
    points = prepared.points
    rows = []
    for i in tqdm(range(min(n_xrays, len(xrays))), desc="optimizers", mininterval=5):
        image, gt = xrays.images[i : i + 1], xrays.poses[i].numpy()
        init = context.regressor.predict(image.to(context.renderer.device))[0].cpu().double()
        for name in OPTIMIZERS:
            trace = Trace()
            trace.record(0, init)
            if name == "LM":
                method._lm(method.residual_fn(image), init, trace)
            else:
                kind = "adam" if name == "Adam" else "sgd"
                method.first_order(image, init, kind, iterations, trace)
            poses = np.stack([p.numpy() for p in trace.poses])
            errors = evaluate.mtre(poses, gt[None].repeat(len(poses), 0), points)
            rows += [
                {
                    "xray_id": xrays.ids[i],
                    "method": name,
                    "iteration": it,
                    "seconds": s,
                    "mtre_mm": m,
                }
                for it, s, m in zip(trace.iterations, trace.seconds, errors, strict=True)
            ]
    return pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)


def registration_context(
    prepared_dir: str | Path,
    xrays_dir: str | Path,
    regressor: str | Path,
    similarity: str | Path | None,
    settings: dict,
    method: str,
    model: str | Path | None = None,
) -> tuple[Prepared, XraySet, Context]:
    """A subject's prepared data, X-rays and the method's Context (models loaded, never the
    ground truth), seeded with the master seed: what ``register`` and the benchmarks run.
    ``similarity`` is a learned-similarity method's model, ``model`` a method's own."""
    from regbench.data.subject import load_prepared
    from regbench.data.xrays import read_xrays
    from regbench.device import resolve_device
    from regbench.methods import check_method, needs_own_model, needs_similarity
    from regbench.seeding import seed_everything
    from regbench.train.regressor import load_regressor

    check_method(method)
    device = resolve_device(settings["device"])
    prepared = load_prepared(prepared_dir)
    seed_everything(settings["seed"])
    xrays = read_xrays(xrays_dir, prepared.geometry)
    initialiser = load_regressor(regressor, settings, device)
    context = Context.for_subject(prepared, settings, initialiser, device, xrays.border_px)
    if needs_similarity(method):
        if not similarity:
            raise InputError(f"method '{method}' needs --similarity (a trained model)")
        context.attach_similarity(similarity, method, prepared, device)
    if needs_own_model(method):
        if not model:
            raise InputError(f"method '{method}' needs --model (its trained model)")
        context.attach_model(model, method, device)
    return prepared, xrays, context
