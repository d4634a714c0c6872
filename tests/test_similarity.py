"""The learned similarity: image terms, fast LM Jacobian, unrolled-LM training loss, starts,
and the training X-rays' randomised domain gap."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import pose_deg

from regbench.geometry.poses import carm_params, carm_pose, perturb
from regbench.methods.similarity import multiscale_ncc
from regbench.models.residual import LatentResidual
from regbench.models.variants import VARIANTS, training_seed_tag
from regbench.rendering.diffdrr_adapter import make_drr
from regbench.rendering.renderer import make_renderer
from regbench.train.similarity import (
    build_similarity_model,
    drr_branch_images,
    sample_starts,
    truth_loss,
    unrolled_lm_loss,
)
from regbench.train.xray_domain import TrainingXrays, compose, density_parts


@pytest.mark.parametrize("bone", [1.0, 1.6])
def test_density_parts_are_diffdrrs_density(prepared, bone):
    """``A + m B`` is diffdrr's density for bone multiplier m, up to one scale."""
    drr = make_drr(prepared, bone, "trilinear")
    parts = density_parts(prepared.ct)
    ours = parts[0] + bone * parts[1]
    ref = drr.density.float()
    assert torch.allclose(ours / ours.max(), ref / ref.max(), atol=1e-6)


def test_training_xrays_render_the_test_contrast(prepared, similarity_settings):
    """At the test X-rays' bone multiplier, the training renderer's clean image is the DRR
    the simulator renders (up to the scale the degradation removes)."""
    xrays = TrainingXrays(prepared, similarity_settings)
    pose = pose_deg((2.0, -1.0, 0.5), (3.0, 860.0, -2.0))
    ours = compose(xrays.parts(pose), torch.tensor([1.6]))
    ref = make_renderer(prepared, 1.6, "compiled").render(
        pose, similarity_settings["render"]["n_points"]
    )
    assert torch.allclose(ours / ours.max(), ref / ref.max(), atol=1e-5)
    images = xrays.sample(pose.repeat(3, 1, 1), torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 32, 32) and torch.isfinite(images).all()
    assert not torch.allclose(images[0], images[1])  # each image its own contrast and noise


def test_untrained_spherical_distance_is_arccos_of_diffposes_mncc(
    similarity_setup, similarity_settings
):
    """With the encoder features switched off and every patch kept (stride 1, DiffPose's),
    cos(distance) is DiffPose's multiscale NCC of the two images inside the crop."""
    cfg = {**similarity_settings["similarity"], "patch_stride_px": 1}
    model = build_similarity_model("ours-so4", cfg).eval()
    with torch.no_grad():
        model.feature_gain.zero_()
        features = model.features(similarity_setup.density)
        gt, moved = pose_deg(), pose_deg((1.5, 0.0, -1.0), (4.0, 855.0, 3.0))
        xray = similarity_setup.drr(gt)[:, :1] + similarity_setup.drr(gt)[:, 1:]
        e_x, bone = model.embed_xray(xray)
        images = similarity_setup.images(features, moved, bone)
        distance = model.distance(e_x, model.embed_drr_images(images))
        expected = multiscale_ncc(5, border_px=1)(images[:, :1].float(), xray)
    assert torch.allclose(torch.cos(distance), expected.to(distance), atol=1e-4)


@pytest.mark.parametrize(
    "feature_gain, steps, tolerance", [(0.0, (1e-6, 1e-4), 0.01), (1.0, (1e-5, 5e-3), 0.1)]
)
def test_fast_jacobian_matches_central_differences(
    similarity_setup, similarity_settings, feature_gain, steps, tolerance
):
    """Every column of the LM Jacobian (compiled projector + tangents through the image terms,
    encoders and latent map) matches central differences of the residual in the pose: to 1%
    through the float64 image terms alone, to 10% with the float32 encoders switched on."""
    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", similarity_settings["similarity"]).eval()
    # Render in float64 so that the check sees derivative errors, not float32 rounding.
    similarity_setup = copy.copy(similarity_setup)
    similarity_setup.drr_table = similarity_setup.drr_projector.prepare(
        similarity_setup.drr_table.volume.double()
    )
    with torch.no_grad():
        model.feature_gain.fill_(feature_gain)
        features = model.features(similarity_setup.density).double()
        xray = similarity_setup.drr(pose_deg()).sum(1, keepdim=True)
        residual = LatentResidual(model, similarity_setup, xray, features)
    pose = pose_deg((2.0, 1.0, -1.0), (5.0, 845.0, -4.0))
    _, jac = residual.linearise(pose)
    for k in range(6):
        dxi = torch.zeros(1, 6, dtype=torch.float64)
        dxi[0, k] = steps[0] if k < 3 else steps[1]
        fd = (residual(perturb(pose, dxi)) - residual(perturb(pose, -dxi))) / (2 * dxi[0, k])
        error = (jac[0, :, k] - fd[0]).norm() / fd[0].norm()
        assert error < tolerance, (k, float(error))


def test_unrolled_lm_moves_towards_the_truth_and_trains_every_part(
    similarity_setup, similarity_settings
):
    """Differentiable LM on an untrained model lowers the distance to the truth, and its loss
    sends finite, non-zero gradients to the gains, the encoders and the volume network."""
    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", similarity_settings["similarity"])
    gt = pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, 1.0))
    with torch.no_grad():
        xray = similarity_setup.drr(gt).sum(1, keepdim=True)
    rot, trans = carm_params(gt)
    start = carm_pose(rot + math.radians(1.5), trans + torch.tensor([[3.0, 6.0, -3.0]]))
    features = model.features(similarity_setup.density)
    residual = LatentResidual(model, similarity_setup, xray, features)
    loss, final = unrolled_lm_loss(residual, start, gt, steps=3)
    before, _ = unrolled_lm_loss(residual, start, gt, steps=0)
    assert float(final[0]) < 0.5 * float(before)
    loss.backward()
    for name in ("image_gain", "feature_gain"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad) and grad.abs() > 0, name
    for part in (model.encoder_drr, model.encoder_xray, model.volume_net):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_truth_loss_is_blind_to_the_feature_gain_and_trains_both_encoders(
    similarity_setup, similarity_settings
):
    """The encoder features' mismatch at the true pose: positive for two random encoders,
    unchanged when the feature gain is scaled (so switching the features off cannot meet it),
    and it reaches both encoders and the volume network, not the gain."""
    cfg = similarity_settings["similarity"]
    gt = pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, 1.0))
    with torch.no_grad():
        xray = similarity_setup.drr(gt).sum(1, keepdim=True)
    losses = []
    for gain in (0.1, 0.3):
        torch.manual_seed(0)
        model = build_similarity_model("ours-so4", cfg)
        with torch.no_grad():
            model.feature_gain.fill_(gain)
        residual = LatentResidual(
            model, similarity_setup, xray, model.features(similarity_setup.density)
        )
        losses.append(truth_loss(residual, gt))
    assert 0 < losses[0].item() < 2
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)
    losses[1].backward()
    assert abs(float(model.feature_gain.grad)) < 1e-6 * losses[1].item()
    for part in (model.encoder_drr, model.encoder_xray, model.volume_net):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0


def test_training_renders_the_images_registration_sees(similarity_setup, similarity_settings):
    """The DRR branch's training input (DRR channel rendered alone, learned channels with their
    graph) is the image registration embeds at the same pose; the encoder part of an embedding
    is the gained encoder output."""
    cfg = similarity_settings["similarity"]
    gt = pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, 1.0))
    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", cfg)
    with torch.no_grad():
        xray = similarity_setup.drr(gt).sum(1, keepdim=True)
        residual = LatentResidual(
            model, similarity_setup, xray, model.features(similarity_setup.density)
        )
        ours = drr_branch_images(residual, gt)
        registration = residual.images(gt)
    assert ours.shape == registration.shape and ours.shape[1] > 1
    assert torch.equal(ours[:, :1], registration[:, :1].to(ours.dtype))
    assert torch.allclose(ours[:, 1:], registration[:, 1:].to(ours.dtype), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        encoded = model.encoder_drr(model.standardize_inside(ours).float())
        e_d = model.embed_drr_images(ours)
    gained = model.feature_gain * encoded / cfg["embed_dim"] ** 0.5
    assert torch.allclose(model.encoder_part(e_d), gained.double())


def test_the_paper_method_and_its_ablations_train_from_one_seed(similarity_settings):
    """Table 3 compares one component at a time: ours-* and abl-* share a training seed and so
    every initial weight where their networks agree (all of them between the latent
    geometries); each baseline keeps a seed of its own."""
    paired = [v for v in VARIANTS if VARIANTS[v].refiner == "lm"]
    assert {"ours-so4", "ours-se3", "abl-euclidean", "abl-hyperbolic"} <= set(paired)
    assert len({training_seed_tag(v) for v in paired}) == 1
    own = {training_seed_tag(v) for v in VARIANTS if v not in paired}
    assert len(own) == len(VARIANTS) - len(paired)
    assert training_seed_tag("ours-so4") not in own
    cfg = similarity_settings["similarity"]
    weights = {}
    for v in ("ours-so4", "abl-euclidean", "abl-hyperbolic", "abl-cnn3d"):
        torch.manual_seed(3)
        weights[v] = build_similarity_model(v, cfg).state_dict()
    ours = weights["ours-so4"]
    for v in ("abl-euclidean", "abl-hyperbolic"):
        assert weights[v].keys() == ours.keys()
        assert all(torch.equal(weights[v][k], ours[k]) for k in ours), v
    assert any(k in ours and not torch.equal(w, ours[k]) for k, w in weights["abl-cnn3d"].items())


def test_training_starts_mix_the_initialiser_and_near_truth_poses():
    cfg = {
        "near_truth_fraction": 0.5,
        "near_truth_rotation_deg": 0.5,
        "near_truth_translation_mm": 2,
    }
    gt = pose_deg().repeat(400, 1, 1)
    initial = pose_deg((5.0, 0.0, 0.0), (0.0, 870.0, 0.0)).repeat(400, 1, 1)
    starts = sample_starts(gt, initial, cfg, torch.Generator().manual_seed(0))
    from_initialiser = torch.isclose(starts, initial).all(-1).all(-1)
    assert 0.4 < float(from_initialiser.double().mean()) < 0.6
    near = starts[~from_initialiser]
    offset = (near[:, :3, 3] - gt[: len(near), :3, 3]).norm(dim=-1)
    assert float(offset.median()) < 10.0  # a few mm, plus the source's lever arm
    none = sample_starts(gt, initial, {**cfg, "near_truth_fraction": 0.0}, torch.Generator())
    assert torch.equal(none, initial)


def test_a_diverging_first_order_optimiser_ends_its_trajectory_instead_of_raising(
    prepared, similarity_settings, similarity_setup
):
    """The optimiser study's gradient descent may blow up (it does on the encoder-only model):
    its trajectory then ends at the last finite pose instead of crashing the study."""
    from regbench.methods import build_method
    from regbench.methods.base import Context, Trace

    s = copy.deepcopy(similarity_settings)
    s["optimizer_study"] = {"lr_rotation": 1e9, "lr_translation": 1e12}
    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", s["similarity"])
    context = Context(make_renderer(prepared, 1.0), None, 48, s, 0, model, similarity_setup)
    method = build_method("ours-so4", context)
    gt = pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, 1.0))
    with torch.no_grad():
        xray = similarity_setup.drr(gt).sum(1, keepdim=True)
    start = pose_deg((2.0, -1.0, 0.0), (6.0, 860.0, -3.0))[0]
    trace = Trace()
    trace.record(0, start)
    pose = method.first_order(xray, start, "sgd", 10, trace)
    assert torch.isfinite(pose).all()
    assert 1 <= len(trace.poses) < 11
    assert all(torch.isfinite(p).all() for p in trace.poses)
