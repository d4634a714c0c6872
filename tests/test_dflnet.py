"""DFLNet: its labels, confidence test, pose from an oracle network and its training, against
known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from configs import paper_config
from torch import nn

from regbench import evaluate
from regbench.config import load_config
from regbench.data.subject import Prepared
from regbench.errors import InputError
from regbench.geometry.poses import carm_pose
from regbench.geometry.projection import project_points
from regbench.methods import OWN_MODELS, build_method, method_class
from regbench.methods.base import Context, RegistrationFailed, Trace
from regbench.models.heatmaps import gaussian_heatmaps, heatmap_peaks
from regbench.models.landmark_net import (
    HeatmapNet,
    heatmap_loss,
    landmark_labels,
    landmark_pixels,
    peak_confidence,
)
from regbench.rendering.renderer import make_renderer
from regbench.train.xray_domain import TrainingXrays, compose

SIGMA = 1.5


def settings(steps: int = 2) -> dict:
    """The default config's sections a training sees, CPU-sized for a test."""
    cfg = load_config(None)
    blob = {k: cfg[k] for k in ("seed", "device", "threads", "prior", "render", "geometry")}
    blob["augment"] = cfg["augment"]
    blob["render"] = {**blob["render"], "n_points": 32}
    training = {**cfg["dflnet"]["training"], "steps": steps, "batch_size": 2}
    training.update(base_channels=4, depth=2, sigma_px=SIGMA)
    blob["dflnet"] = {"training": training, "registration": cfg["dflnet"]["registration"]}
    return blob


def true_pose() -> torch.Tensor:
    rot = torch.tensor([[0.03, -0.02, 0.04]], dtype=torch.float64)
    return carm_pose(rot, torch.tensor([[4.0, 840.0, -6.0]], dtype=torch.float64))[0]


class Oracle(nn.Module):
    """Returns the exact labels of ``pose`` (landmarks within a pixel of the border left out:
    there the sub-pixel refinement stays at the pixel centre), ``keep`` of them unflattened."""

    def __init__(self, prepared, pose: torch.Tensor, keep: int | None = None, sigma: float = SIGMA):
        super().__init__()
        self.points = torch.from_numpy(prepared.points)
        self.geometry = prepared.geometry
        pixels = landmark_pixels(pose.numpy()[None], prepared.points, prepared.geometry)
        h, w = self.geometry["height"], self.geometry["width"]
        inner = (pixels[..., 0] > 1) & (pixels[..., 0] < w - 1)
        inner &= (pixels[..., 1] > 1) & (pixels[..., 1] < h - 1)
        pixels[~inner] = float("nan")
        self.maps = gaussian_heatmaps(pixels, h, w, sigma).float()
        self.n_inner = int(inner.sum())
        if keep is not None:
            shown = torch.nonzero(inner[0]).ravel()[keep:]
            self.maps[0, shown] = 0.25  # flat: no peak

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.maps.expand(len(images), -1, -1, -1)


def method_for(prepared, model: nn.Module):
    cfg = settings()
    context = Context(make_renderer(prepared, 1.0), None, 32, cfg, model=model)
    return build_method("dflnet", context)


def test_labels_peak_where_the_landmarks_project(prepared):
    poses = carm_pose(
        torch.tensor([[0.0, 0.0, 0.0], [0.06, -0.05, 0.08]], dtype=torch.float64),
        torch.tensor([[0.0, 850.0, 0.0], [30.0, 800.0, -40.0]], dtype=torch.float64),
    ).numpy()
    g = prepared.geometry
    maps, visible = landmark_labels(poses, prepared.points, g, SIGMA)
    exact = project_points(poses, prepared.points, g)
    inside = (exact >= 0).all(-1) & (exact[..., 0] < g["width"]) & (exact[..., 1] < g["height"])
    np.testing.assert_array_equal(visible.numpy(), inside)
    assert visible.sum() >= 8 and (~visible).any()  # some landmarks leave the 32 px detector
    assert float(maps[~visible].abs().max()) == 0.0  # off the detector: an empty map
    peaks, _ = heatmap_peaks(maps.double())
    inner = torch.from_numpy(((exact > 1) & (exact < g["width"] - 1)).all(-1))
    torch.testing.assert_close(
        peaks[inner], torch.from_numpy(exact)[inner], atol=1e-4, rtol=0
    )  # float32 maps: exact to 1e-4 px
    _, ncc = peak_confidence(maps, SIGMA, 15)
    far = torch.from_numpy(((exact > 5) & (exact < g["width"] - 5)).all(-1))
    assert far.sum() >= 4 and (ncc[far] > 0.99).all()  # a label passes the 0.9 test easily
    pred = (2 * maps + 0.1 * torch.rand_like(maps)).requires_grad_(True)
    heatmap_loss(pred, maps, visible).backward()  # empty labels: no NaN gradient
    assert torch.isfinite(pred.grad).all() and heatmap_loss(maps, maps, visible).item() < 1e-6


def test_labels_sit_on_the_landmarks_in_the_training_and_test_xrays(prepared):
    """A bone cube at one landmark, alone in air: its blob in the training DRR and in the
    test renderer's image is centred on that landmark's label pixel."""
    poses = carm_pose(
        torch.tensor([[0.0, 0.0, 0.0], [0.05, -0.04, 0.06]], dtype=torch.float64),
        torch.tensor([[0.0, 850.0, 0.0], [10.0, 830.0, -15.0]], dtype=torch.float64),
    )
    to_voxel = np.linalg.inv(prepared.affine)
    h, w = prepared.geometry["height"], prepared.geometry["width"]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for k in (0, len(prepared.points) // 2, len(prepared.points) - 1):
        ijk = np.round(to_voxel[:3, :3] @ prepared.points[k] + to_voxel[:3, 3]).astype(int)
        ct = np.full(prepared.ct.shape, -1000.0, dtype=np.float32)
        ct[0, 0, 0] = 0.0  # diffdrr needs a soft-tissue voxel; at the floor its density is 0
        ct[tuple(slice(i - 1, i + 2) for i in ijk)] = 1000.0
        cube = prepared.affine[:3, :3] @ ijk + prepared.affine[:3, 3]
        subject = Prepared(ct, prepared.affine, prepared.landmarks, prepared.geometry)
        label = landmark_pixels(poses.numpy(), cube[None], prepared.geometry)[:, 0]
        assert torch.isfinite(label).all()
        train = compose(TrainingXrays(subject, settings()).parts(poses), torch.ones(2))
        test = make_renderer(subject, 1.0).render(poses, 64)
        for images in (train, test):
            blob = images[:, 0].double() - images.amin(dim=(-2, -1))[:, 0, None, None]
            blob = blob * (blob > 0.2 * blob.amax(dim=(-2, -1), keepdim=True))
            mass = blob.sum(dim=(-2, -1))
            centroid = torch.stack([(blob * u).sum((-2, -1)), (blob * v).sum((-2, -1))], -1)
            torch.testing.assert_close(centroid / mass[:, None], label, atol=0.35, rtol=0)


def test_default_threshold_keeps_coarse_peaks_and_the_paper_keeps_the_authors(prepared):
    """Maps twice as wide as the labels (a CPU-budget network's blurred peaks) pass the
    default 0.6 and register exactly; the authors' 0.9 (paper.yaml) rejects them all."""
    assert load_config(None)["dflnet"]["registration"]["min_ncc"] == 0.6
    assert paper_config()["dflnet"]["registration"]["min_ncc"] == 0.9
    gt = true_pose()
    oracle = Oracle(prepared, gt, sigma=2 * SIGMA)
    peaks, ncc = peak_confidence(oracle.maps, SIGMA, 15)
    shown = oracle.maps.amax(dim=(-2, -1))[0] > 0
    assert (ncc[0][shown] < 0.9).all() and int((ncc[0][shown] >= 0.6).sum()) >= 8
    result = method_for(prepared, oracle).register(torch.zeros(1, 1, 32, 32), init=torch.eye(4))
    assert result.status == "ok"
    assert evaluate.mtre(result.pose.numpy(), gt.numpy(), prepared.points)[0] < 1e-2
    method = method_for(prepared, oracle)
    method.context.settings["dflnet"]["registration"] = {
        **method.context.settings["dflnet"]["registration"],
        "min_ncc": 0.9,
    }
    with pytest.raises(RegistrationFailed, match="0 confident landmarks"):
        method.refine(torch.zeros(1, 1, 32, 32), torch.eye(4), Trace())


def test_peak_confidence_rejects_flat_and_wrong_shaped_maps():
    pixel = torch.tensor([[[12.3, 17.6]]], dtype=torch.float64)
    label = gaussian_heatmaps(pixel, 32, 32, SIGMA)
    wide = gaussian_heatmaps(pixel, 32, 32, 4 * SIGMA)
    flat = torch.full_like(label, 0.3)
    two = label + gaussian_heatmaps(pixel + 4.0, 32, 32, SIGMA)  # a second blob nearby
    _, ncc = peak_confidence(torch.cat([label, wide, flat, two], dim=1), SIGMA, 15)
    assert ncc[0, 0] > 0.999 and ncc[0, 1] < 0.9 and ncc[0, 2] == 0.0 and ncc[0, 3] < 0.9


def test_oracle_heatmaps_give_the_true_pose(prepared):
    gt = true_pose()
    oracle = Oracle(prepared, gt)
    assert oracle.n_inner >= 8
    image = torch.zeros(1, 1, 32, 32)
    result = method_for(prepared, oracle).register(image, init=torch.eye(4))
    assert result.status == "ok" and result.pose.dtype == torch.float64
    error = evaluate.mtre(result.pose.numpy(), gt.numpy(), prepared.points)[0]
    assert error < 1e-3, error
    torch.testing.assert_close(result.trace.poses[-1], result.pose)  # the final pose is traced


def test_too_few_confident_landmarks_fail_the_xray(prepared):
    method = method_for(prepared, Oracle(prepared, true_pose(), keep=3))
    with pytest.raises(RegistrationFailed, match="3 confident landmarks"):
        method.refine(torch.zeros(1, 1, 32, 32), torch.eye(4), Trace())
    result = method.register(torch.zeros(1, 1, 32, 32), init=torch.eye(4))
    assert result.status == "failed" and "3 confident landmarks" in result.message


def test_heatmap_net_keeps_any_image_size():
    net = HeatmapNet(np.zeros((5, 3)), {"height": 30, "width": 36}, base_channels=4, depth=2)
    out = net(torch.rand(2, 1, 30, 36))
    assert out.shape == (2, 5, 30, 36)


def test_training_writes_model_log_snapshot_and_refuses_other_settings(prepared, tmp_path):
    assert "dflnet" in OWN_MODELS
    cls = method_class("dflnet")
    cfg = settings(steps=2)
    out, log_csv = tmp_path / "dflnet.pt", tmp_path / "dflnet.log.csv"
    cls.train(prepared, cfg, 7, out, log_csv, torch.device("cpu"))
    assert out.is_file() and not out.with_suffix(".partial").exists()
    log = pd.read_csv(log_csv)
    assert list(log["step"]) == [1, 2] and np.isfinite(log["loss"]).all()
    snapshot = json.loads(out.with_suffix(".config.json").read_text())
    assert snapshot["training"] == cfg["dflnet"]["training"] and snapshot["subject_seed"] == 7
    model = cls.load_model(out, cfg, torch.device("cpu"))
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, len(prepared.points), 32, 32)
    np.testing.assert_array_equal(model.points.numpy(), prepared.points)
    other_registration = {**cfg, "dflnet": {**cfg["dflnet"], "registration": {"min_ncc": 0.5}}}
    cls.load_model(out, other_registration, torch.device("cpu"))  # registration: no retraining
    other = settings(steps=3)
    with pytest.raises(InputError, match="other settings"):
        cls.load_model(out, other, torch.device("cpu"))
