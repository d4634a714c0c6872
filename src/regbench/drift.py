"""Where each method's optimum lies: every refiner started at the ground truth.

A refiner whose objective has its minimum at the truth stays there; one whose minimum is
misplaced walks away, and how far (in mTRE, split into depth along the principal ray and the
in-plane rest) tells a misplaced minimum from a poor capture range before any table is read.
It reruns the registrations of a finished run with the settings and models they used (their
``runs/{method}.config.json``), the initial pose replaced by the ground truth.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from regbench import evaluate
from regbench.methods.base import RegistrationFailed, Trace
from regbench.rendering.torch_projector import FeatureProjector

log = logging.getLogger(__name__)

NO_REFINER = ("posenet",)


def depth_axis(drr) -> np.ndarray:
    """Unit vector of the principal ray (source to detector centre) in the camera frame."""
    projector = FeatureProjector.from_drr(drr)
    ray = projector.targets.mean(0) - projector.source
    return (ray / ray.norm()).numpy()


def landmark_errors(
    est: np.ndarray, gt: np.ndarray, points: np.ndarray, axis: np.ndarray
) -> tuple[float, float, float]:
    """mTRE, mean depth error and mean in-plane error [mm] of one pose (camera frame)."""
    moved = (
        evaluate.transform_points(evaluate.invert_pose(est), points)[0]
        - (evaluate.transform_points(evaluate.invert_pose(gt), points)[0])
    )
    along = moved @ axis
    across = moved - along[:, None] * axis
    return (
        float(np.linalg.norm(moved, axis=1).mean()),
        float(np.abs(along).mean()),
        float(np.linalg.norm(across, axis=1).mean()),
    )


def drift_from_truth(subject_dir: Path, n_xrays: int) -> list[dict]:
    """Per method of a finished subject run (``{results}/{dataset}/{subject}``) and X-ray:
    the refiner started at the ground truth, and how far it ended from it."""
    from regbench.methods import build_method
    from regbench.runner import registration_context

    runs = sorted((subject_dir / "runs").glob("*.config.json"))
    if not runs:
        raise FileNotFoundError(f"no finished registrations under {subject_dir / 'runs'}")
    rows = []
    for snapshot in runs:
        blob = json.loads(snapshot.read_text())
        name, settings = blob["method"], blob["settings"]
        if name in NO_REFINER:
            continue
        models = subject_dir / "models"
        similarity, own = models / f"similarity-{name}.pt", models / f"{name}.pt"
        prepared, xrays, context = registration_context(
            subject_dir / "prepared",
            subject_dir / "xrays",
            models / "regressor.pt",
            similarity if similarity.is_file() else None,
            settings,
            name,
            own if own.is_file() else None,  # a method's own model (landmarks, coordinates)
        )
        method = build_method(name, context)
        axis = depth_axis(context.renderer.drr)
        for i in range(min(n_xrays, len(xrays))):
            gt = xrays.poses[i].double()
            try:
                pose, _ = method.refine(xrays.images[i : i + 1], gt.clone(), Trace())
            except RegistrationFailed as exc:  # counted as in the tables: no pose, no drift
                log.info("%s %s: no pose (%s)", name, xrays.ids[i], exc)
                continue
            mtre, depth, in_plane = landmark_errors(
                pose.detach().numpy(), gt.numpy(), prepared.points, axis
            )
            rows.append(
                {
                    "method": name,
                    "xray_id": xrays.ids[i],
                    "mtre_mm": mtre,
                    "depth_mm": depth,
                    "in_plane_mm": in_plane,
                }
            )
            log.info("%s %s: drift %.3f mm from the truth", name, xrays.ids[i], mtre)
    return rows


def drift_summary(rows: list[dict]) -> list[tuple[str, str, float]]:
    """(method, metric, value) medians over the X-rays: mTRE, depth and in-plane drift."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    out = []
    for name, block in frame.groupby("method", sort=False):
        for column, metric in (
            ("mtre_mm", "median drift mTRE"),
            ("depth_mm", "median drift depth"),
            ("in_plane_mm", "median drift in-plane"),
        ):
            out.append((name, metric, float(block[column].median())))
    return out
