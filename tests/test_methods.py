"""The optimisation baselines register a DRR to itself from a perturbed start."""

import math

import pytest
import torch

from regbench import evaluate
from regbench.errors import InputError
from regbench.geometry.poses import carm_params, carm_pose
from regbench.methods import ALL_METHODS, IMPLEMENTED, build_method, check_method
from regbench.methods.base import Context, Trace
from regbench.methods.similarity import multiscale_ncc
from regbench.rendering.renderer import make_renderer

SETTINGS = {
    "diffpose": {
        "max_iterations": 120,
        "lr_rotation": 0.01,
        "lr_translation": 1.0,
        "patch_size": 9,
        "patience": 10,
        "tol": 1e-4,
        "max_decays": 2,
    },
    "bobyqa": {
        "max_evaluations": 150,
        "patch_size": 9,
        "rotation_bound_deg": 10.0,
        "translation_bound_mm": 30.0,
        "rhobeg": 0.1,
        "rhoend": 1e-4,
    },
}


@pytest.fixture(scope="module")
def problem(prepared):
    renderer = make_renderer(prepared, 1.0)
    gt = carm_pose(
        torch.tensor([[0.02, -0.03, 0.01]]).double(), torch.tensor([[2.0, 850, -3]]).double()
    )
    with torch.no_grad():
        image = renderer.render(gt, 64)
    rot, trans = carm_params(gt)
    init = carm_pose(rot + math.radians(2.0), trans + torch.tensor([[4.0, 10.0, -4.0]]).double())
    return renderer, gt[0], image, init[0], prepared.points


@pytest.mark.parametrize("name", ["diffpose", "bobyqa"])
def test_refiners_reduce_mtre(problem, name):
    renderer, gt, image, init, points = problem
    method = build_method(name, Context(renderer, None, 64, SETTINGS))
    pose, iterations = method.refine(image, init, trace := Trace())
    before = evaluate.mtre(init.numpy(), gt.numpy(), points)[0]
    after = evaluate.mtre(pose.numpy(), gt.numpy(), points)[0]
    assert before > 10.0
    assert after < 0.3 * before, (before, after)
    assert iterations >= 1 and len(trace.poses) == len(trace.seconds) >= 1
    assert all(b >= a for a, b in zip(trace.seconds, trace.seconds[1:], strict=False))


def test_border_is_excluded_from_similarity():
    a = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[..., :2, :] = 5.0  # a bright collimator edge only in one image
    assert multiscale_ncc(5, border_px=2)(a, b).item() == pytest.approx(1.0, abs=1e-3)
    assert multiscale_ncc(5, border_px=0)(a, b).item() < 0.9


def test_registry_names_every_method_and_refuses_unknown_ones(monkeypatch):
    assert set(IMPLEMENTED) <= set(ALL_METHODS)
    with pytest.raises(InputError, match="unknown method 'magic'"):
        check_method("magic")
    # Every method of the tables is implemented: a listed one without a class is simulated.
    monkeypatch.setattr("regbench.methods.IMPLEMENTED", IMPLEMENTED - {"sopi"})
    with pytest.raises(InputError, match="not implemented"):
        check_method("sopi")


def test_compiled_renderer_gives_diffdrrs_images_and_pose_gradients(prepared):
    """``render.renderer: compiled`` is a faster path to the same DRRs, not another model."""
    rot = torch.tensor([[0.02, -0.03, 0.01]], requires_grad=True)
    trans = torch.tensor([[2.0, 850.0, -3.0]], requires_grad=True)
    images, grads = [], []
    for kind in ("trilinear", "compiled"):
        renderer = make_renderer(prepared, 1.0, kind)
        assert (renderer.compiled is not None) == (kind == "compiled")
        image = renderer.render(carm_pose(rot, trans), 64)
        (g_rot, g_trans) = torch.autograd.grad((image**2).sum(), (rot, trans))
        images.append(image)
        grads.append(torch.cat([g_rot, g_trans], dim=-1))
    assert images[1].dtype == torch.float32 and images[1].shape == images[0].shape
    assert float((images[1] - images[0]).norm() / images[0].norm()) < 1e-4
    # Both differentiate through the per-pose sampling range (see regbench.rendering.torch_projector), so the
    # pose gradients agree to float32 rounding (6e-5; 5% before the range was included).
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-3
    with pytest.raises(InputError, match="render.renderer"):
        make_renderer(prepared, 1.0, "raytrace")
