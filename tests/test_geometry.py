import math

import numpy as np
import pytest
import torch

from regbench import evaluate
from regbench.geometry.poses import (
    carm_params,
    carm_pose,
    check_rigid,
    invert,
    perturb,
    perturb_world,
    relative,
    rigidity_error,
    se3_exp,
    se3_log,
)
from regbench.geometry.priors import PosePrior


def test_se3_exp_of_pure_translation_is_translation():
    xi = torch.tensor([[0.0, 0.0, 0.0, 1.0, -2.0, 3.0]], dtype=torch.float64)
    T = se3_exp(xi)[0]
    assert torch.allclose(T[:3, :3], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(T[:3, 3], torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))


def test_se3_exp_of_rotation_about_z_column_layout():
    xi = torch.tensor([[0.0, 0.0, math.pi / 2, 0.0, 0.0, 0.0]], dtype=torch.float64)
    T = se3_exp(xi)[0]
    # Column-vector convention: R @ e_x = e_y for +90 deg about z.
    assert torch.allclose(
        T[:3, :3] @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
        atol=1e-9,
    )


def test_se3_log_inverts_exp():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(5, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [0.3, 0.3, 0.3, 20.0, 20.0, 20.0], dtype=torch.float64
    )
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=1e-6)


def test_right_perturbation_acts_in_camera_frame():
    pose = carm_pose(
        torch.tensor([[0.1, -0.2, 0.3]]).double(), torch.tensor([[5.0, 850, -3]]).double()
    )
    xi = torch.tensor([[0, 0, 0, 0, 0, 10.0]], dtype=torch.float64)  # 10 mm along camera z
    moved = perturb(pose, xi)
    shift = moved[0, :3, 3] - pose[0, :3, 3]
    assert torch.allclose(shift, 10.0 * pose[0, :3, 2], atol=1e-9)
    assert torch.allclose(relative(pose, moved), se3_exp(xi), atol=1e-9)


def test_carm_parameterisation_round_trip_and_isocentre_rotation():
    rot = torch.tensor([[0.05, -0.1, 0.2]], dtype=torch.float64)
    trans = torch.tensor([[3.0, 850.0, -7.0]], dtype=torch.float64)
    pose = carm_pose(rot, trans)
    r2, t2 = carm_params(pose)
    assert torch.allclose(r2, rot, atol=1e-9) and torch.allclose(t2, trans, atol=1e-6)
    # Rotating about the isocentre keeps the source 850 mm away from it.
    assert math.isclose(float(pose[0, :3, 3].norm()), float(trans.norm()), rel_tol=1e-9)


def test_invert_and_rigidity():
    pose = carm_pose(
        torch.tensor([[0.3, 0.2, -0.1]]).double(), torch.tensor([[1.0, 800, 2]]).double()
    )
    assert torch.allclose(invert(pose) @ pose, torch.eye(4, dtype=torch.float64)[None], atol=1e-9)
    assert rigidity_error(pose) < 1e-9
    bad = pose.clone()
    bad[0, 0, 0] *= 1.1
    with pytest.raises(ValueError, match="not a rigid transform"):
        check_rigid(bad, "test pose")
    bad = pose.clone()
    bad[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_rigid(bad, "test pose")
    reflection = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="not a rigid"):
        check_rigid(reflection, "mirror")


def test_prior_sampling_is_seeded_and_has_configured_spread():
    prior = PosePrior((0, 0, 0), (4, 4, 4), (0, 850, 0), (8, 20, 8))
    a = prior.sample_params(4000, torch.Generator().manual_seed(3))
    b = prior.sample_params(4000, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    rot_std = a[0].std(dim=0) * 180 / math.pi
    assert torch.allclose(rot_std, torch.full((3,), 4.0, dtype=torch.float64), rtol=0.06)
    assert torch.allclose(
        a[1].mean(dim=0), torch.tensor([0, 850.0, 0], dtype=torch.float64), atol=1.5
    )
    assert torch.allclose(
        a[1].std(dim=0), torch.tensor([8, 20.0, 8], dtype=torch.float64), rtol=0.06
    )
    wide = PosePrior.from_config(
        {
            "rotation_deg_mean": [0, 0, 0],
            "rotation_deg_std": [4, 4, 4],
            "translation_mm_mean": [0, 850, 0],
            "translation_mm_std": [8, 20, 8],
        },
        scale=2.0,
    )
    assert wide.rotation_deg_std == (8, 8, 8)
    assert rigidity_error(prior.sample(10, torch.Generator().manual_seed(0))) < 1e-9


def test_world_perturbation_turns_about_the_isocentre():
    pose = carm_pose(
        torch.tensor([[0.1, -0.2, 0.3]]).double(), torch.tensor([[5.0, 850, 2]]).double()
    )
    rotation = torch.tensor([[0.0, 0.0, math.radians(5.0), 0.0, 0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.0, 8.0]], dtype=torch.float64)
    origin = np.zeros((1, 3))
    # A pure rotation leaves the isocentre in place; a translation moves it by its length.
    assert evaluate.mtre(perturb_world(pose, rotation).numpy(), pose.numpy(), origin)[0] < 1e-9
    moved = evaluate.mtre(perturb_world(pose, shift).numpy(), pose.numpy(), origin)[0]
    assert moved == pytest.approx(10.0)
    # A point 100 mm from the isocentre moves by the chord of 5 degrees.
    point = np.array([[100.0, 0.0, 0.0]])
    chord = 2 * 100 * math.sin(math.radians(2.5))
    assert evaluate.mtre(perturb_world(pose, rotation).numpy(), pose.numpy(), point)[0] == (
        pytest.approx(chord)
    )
