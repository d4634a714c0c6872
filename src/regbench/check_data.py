"""`regbench check-data`: is a parsed subject's ground truth consistent with its raw file?

Why: a wrong convention (axis order, flip, rot-180, crop, prior) is cheap to see on the parsed
data and expensive to find after a day of training. Per subject it measures

- the reprojection error (parsed-image px) of the 3D landmarks under the parsed poses against
  the file's own 2D landmarks (:func:`regbench.data.checks.file_landmarks_2d`);
- the z-scores of the ground-truth poses under the subject's configured prior;
- the multiscale NCC (global + patches, the intensity methods' similarity) of the X-ray with
  the DRR at the ground truth against DRRs at poses perturbed by 2 mm across the view and 1 deg
  about each axis (depth along the view is left out: 2 mm there changes the magnification by
  a fraction of a pixel);
- for Ljubljana, the same at the ground truth with the volume mirrored back along x (the parser
  mirrors the stored array; the other choice must match worse).

:func:`regbench.data.checks.failures` turns the report into messages.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffdrr.pose import RigidTransform

from regbench.data.checks import file_landmarks_2d
from regbench.data.subject import Prepared
from regbench.data.xrays import XraySet
from regbench.geometry.poses import perturb
from regbench.geometry.priors import PosePrior, prior_zscores
from regbench.methods.similarity import multiscale_ncc
from regbench.rendering.renderer import make_renderer

TRANSLATION_MM = 2.0
ROTATION_DEG = 1.0


def perturbations() -> torch.Tensor:
    """(10,6) right perturbations: +-1 deg about each axis, +-2 mm across the view (pose x, z)."""
    rows = []
    for i in (0, 1, 2, 3, 5):  # the pose's y axis is the viewing direction (diffdrr reorient)
        for sign in (1.0, -1.0):
            xi = [0.0] * 6
            xi[i] = sign * (math.radians(ROTATION_DEG) if i < 3 else TRANSLATION_MM)
            rows.append(xi)
    return torch.tensor(rows, dtype=torch.float64)


def check_subject(
    dataset: str,
    subject: str,
    prepared: Prepared,
    xrays: XraySet,
    prior: dict,
    settings: dict,
    source: str | Path | None = None,
    max_xrays: int = 5,
) -> pd.DataFrame:
    """One row per X-ray (the first ``max_xrays``) with every measurement of the module doc."""
    render_cfg = settings["render"]
    n_points = render_cfg["n_points"]
    renderer = make_renderer(prepared, 1.0, "trilinear")
    flipped = None
    if dataset == "ljubljana":
        mirrored = Prepared(
            np.ascontiguousarray(prepared.ct[::-1]),
            prepared.affine,
            prepared.landmarks,
            prepared.geometry,
        )
        flipped = make_renderer(mirrored, 1.0, "trilinear")
    ncc = multiscale_ncc(13, xrays.border_px)
    z = prior_zscores(PosePrior.from_config(prior), xrays.poses)
    names = prepared.landmarks["name"].tolist()
    pts = torch.tensor(prepared.landmarks[["x", "y", "z"]].to_numpy(), dtype=torch.float32)[None]
    reference = {}
    if source is not None:
        reference = file_landmarks_2d(
            dataset, source, subject, names, int(prepared.geometry["height"])
        )
    rows = []
    with torch.no_grad():
        for k, xray_id in enumerate(xrays.ids[:max_xrays]):
            pose, image = xrays.poses[k : k + 1], xrays.images[k : k + 1]
            row = {"subject": subject, "xray_id": xray_id}
            if xray_id in reference:
                drr = renderer.drr
                got = drr.perspective_projection(RigidTransform(pose.float()), pts)[0].numpy()
                row["reprojection_px"] = float(np.abs(got - reference[xray_id]).max())
            else:
                row["reprojection_px"] = float("nan")
            row["max_abs_z"] = float(z[k].abs().max())
            for i, name in enumerate(("z_rot1", "z_rot2", "z_rot3", "z_tx", "z_ty", "z_tz")):
                row[name] = float(z[k, i])
            row["ncc_gt"] = float(ncc(renderer.render(pose, n_points), image).mean())
            moved = [
                float(ncc(renderer.render(perturb(pose, xi[None]), n_points), image).mean())
                for xi in perturbations()
            ]
            row["ncc_perturbed_max"] = max(moved)
            if flipped is not None:
                row["ncc_flipped"] = float(ncc(flipped.render(pose, n_points), image).mean())
            rows.append(row)
    return pd.DataFrame(rows)
