"""Where each method's optimum lies and how far it captures: the refiners of a finished run
started at the ground truth, or at the truth moved by growing offsets.

Started at the truth, a refiner whose objective has its minimum there stays there; one whose
minimum is misplaced walks away, and how far (in mTRE, split into depth along the principal
ray and the in-plane rest) tells a misplaced minimum from a poor capture range before any
table is read. Started at the truth moved by a rotation of ``deg`` about the isocentre and a
shift of ``mm`` (the same random directions for every method and offset, scaled), the share of
X-rays brought under a millimetre per offset is the refiner's capture range, the paper's claim
for its spherical similarity. Both rerun the registrations of a finished run with the settings
and models they used (their ``runs/{method}.config.json``), the initial pose replaced.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from regbench import evaluate
from regbench.errors import InputError
from regbench.geometry.poses import perturb_world
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


def offset_start(
    truth: torch.Tensor, generator: torch.Generator, deg: float, mm: float
) -> torch.Tensor:
    """``truth`` moved by a rotation of ``deg`` about a random axis through the isocentre and
    ``mm`` along a random direction (the CT's frame). The directions are the generator's next
    draw, so a generator seeded alike gives the same directions at every offset."""
    axis, shift = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    xi = torch.cat([axis / axis.norm() * math.radians(deg), shift / shift.norm() * mm])
    return perturb_world(truth, xi[None])[0]


def xray_offset_start(
    truth: torch.Tensor, seed: int, index: int, deg: float, mm: float
) -> torch.Tensor:
    """X-ray ``index``'s start at the offset (``deg``, ``mm``): :func:`offset_start` with a
    generator of its own seeded ``seed + index``, so every method, offset and section that
    reruns a finished run (capture, latents) moves that X-ray along the same directions."""
    return offset_start(truth, torch.Generator().manual_seed(seed + index), deg, mm)


def _refiners(
    subject_dir: Path, methods: Sequence[str] | None, lm_iterations: int | None = None
) -> Iterator[tuple]:
    """(name, method, prepared, xrays, depth axis) per refining method of a finished run, in
    the order asked (``None``: every refiner the run has, by name); ``lm_iterations`` replaces
    the run's ``lm.iterations`` (LM's first pass; refiners with their own optimiser ignore it)."""
    from regbench.methods import build_method
    from regbench.runner import registration_context

    blobs = (
        json.loads(p.read_text()) for p in sorted((subject_dir / "runs").glob("*.config.json"))
    )
    snapshots = {blob["method"]: blob["settings"] for blob in blobs}
    if not snapshots:
        raise FileNotFoundError(f"no finished registrations under {subject_dir / 'runs'}")
    refiners = [n for n in snapshots if n not in NO_REFINER]
    names = list(methods) if methods is not None else refiners
    missing = [n for n in names if n not in refiners]
    if missing:
        raise InputError(
            f"{subject_dir / 'runs'}: no finished registration to rerun for {missing} "
            f"(methods with a refiner there: {refiners})"
        )
    models = subject_dir / "models"
    for name in names:
        settings = snapshots[name]
        if lm_iterations is not None:
            settings["lm"] = {**settings["lm"], "iterations": lm_iterations}
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
        yield name, build_method(name, context), prepared, xrays, depth_axis(context.renderer.drr)


def refine_from_offsets(
    subject_dir: Path,
    n_xrays: int,
    offsets: Sequence[tuple[float, float]] = ((0.0, 0.0),),
    methods: Sequence[str] | None = None,
    seed: int = 0,
    lm_iterations: int | None = None,
) -> list[dict]:
    """Per method of a finished subject run (``{results}/{dataset}/{subject}``), offset
    ``(deg, mm)`` and X-ray: the refiner started at the truth so moved, and where it ended.
    A registration that returns no pose has ``status`` "failed" and NaN errors.
    ``lm_iterations``: LM's first pass instead of the run's (a longer budget tells a start
    out of reach from one the run's budget is too short for)."""
    rows = []
    for name, method, prepared, xrays, axis in _refiners(subject_dir, methods, lm_iterations):
        for deg, mm in offsets:
            for i in range(min(n_xrays, len(xrays))):
                gt = xrays.poses[i].double()
                start = xray_offset_start(gt, seed, i, deg, mm)
                row = {
                    "method": name,
                    "offset_deg": deg,
                    "offset_mm": mm,
                    "xray_id": xrays.ids[i],
                    "mtre_init_mm": landmark_errors(
                        start.numpy(), gt.numpy(), prepared.points, axis
                    )[0],
                }
                try:
                    pose, _ = method.refine(xrays.images[i : i + 1], start, Trace())
                except RegistrationFailed as exc:
                    log.info("%s %s: no pose (%s)", name, xrays.ids[i], exc)
                    nan = float("nan")
                    rows.append({**row, "status": "failed", "mtre_mm": nan, "depth_mm": nan,
                                 "in_plane_mm": nan})  # fmt: skip
                    continue
                mtre, depth, in_plane = landmark_errors(
                    pose.detach().numpy(), gt.numpy(), prepared.points, axis
                )
                rows.append({**row, "status": "ok", "mtre_mm": mtre, "depth_mm": depth,
                             "in_plane_mm": in_plane})  # fmt: skip
                log.info(
                    "%s %s from %.1f deg / %.1f mm (%.2f mm): %.3f mm",
                    name, xrays.ids[i], deg, mm, row["mtre_init_mm"], mtre,
                )  # fmt: skip
    return rows


def drift_from_truth(subject_dir: Path, n_xrays: int) -> list[dict]:
    """Per refining method of a finished subject run and X-ray: the refiner started at the
    ground truth, and how far it ended from it (failed registrations left out: no drift)."""
    rows = refine_from_offsets(subject_dir, n_xrays)
    return [r for r in rows if r["status"] == "ok"]


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
