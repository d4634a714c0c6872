"""For which perturbations ProST's se(3) target and this paper's SO(4) target differ.

Default geometry: source 850 mm from the isocentre (the CT centre, world origin), L = sdd/2 =
510 mm. In the camera frame of these poses the source-isocentre axis is camera y. Known answers
come from the closed-form metrics in :mod:`regbench.geometry.targets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from regbench.geometry.poses import carm_params, carm_pose, hat, perturb, perturb_world
from regbench.geometry.so4 import se3_distance_sq, so4_distance_sq, so4_embed, target_gradient
from regbench.geometry.targets import (
    isocentre_in_camera,
    pose_metric,
    prost_distance_sq,
    training_target,
)

F64 = torch.float64
L = 510.0
D = 850.0
PHI = math.atan(D / L / 2)  # the SO(4) embedding's angle at the default geometry
ROT_TRANSVERSE = math.cos(PHI / 2) ** 2  # SO(4) weights in the frame at the midpoint
TRANS_AXIAL = (math.cos(PHI) ** 2 / 2) ** 2
TRANS_TRANSVERSE = (math.sin(PHI / 2) / math.tan(PHI)) ** 2
START = carm_pose(
    torch.tensor([[0.05, -0.03, 0.02]], dtype=F64), torch.tensor([[0, D, 0.0]], dtype=F64)
)


def both(gt: torch.Tensor, start: torch.Tensor = START) -> tuple[torch.Tensor, torch.Tensor]:
    return training_target(start, gt, L, "se3"), training_target(start, gt, L, "so4")


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def cam(*xi: float) -> torch.Tensor:
    """A camera-frame (right) perturbation of START."""
    return perturb(START, torch.tensor([xi], dtype=F64))


def about_isocentre(axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    """START rotated by ``angle`` about a camera-frame ``axis`` through the CT centre."""
    a = torch.tensor(axis, dtype=F64)
    world_axis = START[0, :3, :3] @ (a / a.norm())
    return perturb_world(START, torch.cat([angle * world_axis, torch.zeros(3, dtype=F64)])[None])


def oblique(a: float, b: float) -> float:
    """Cosine between (1, 1) and (a, b): the two targets of a 45-degree oblique perturbation
    whose components the metrics weigh in the ratio a : b."""
    return (a + b) / (math.sqrt(2) * math.hypot(a, b))


EPS = 1e-4  # first order: 4e-4 deg / 1e-3 mm
RAD, MM = math.radians(4) * EPS, 10 * EPS
# name, ground truth, expected rotation cosine, expected translation cosine (None: that part
# of a target vanishes to first order, checked separately)
CASES: list[tuple[str, Callable[[], torch.Tensor], float | None, float | None]] = [
    ("translation along the ray", lambda: cam(0, 0, 0, 0, MM, 0), None, 1.0),
    ("translation normal to the ray", lambda: cam(0, 0, 0, MM, 0, 0), 1.0, 1.0),
    (
        "translation at 45 deg to the ray",
        lambda: cam(0, 0, 0, MM, MM, 0),
        1.0,
        oblique(TRANS_TRANSVERSE, TRANS_AXIAL),
    ),
    ("rotation about the source, about the ray", lambda: cam(0, RAD, 0, 0, 0, 0), 1.0, None),
    ("rotation about the source, normal to it", lambda: cam(RAD, 0, 0, 0, 0, 0), 1.0, 1.0),
    (
        "rotation about the source, 45 deg axis",
        lambda: cam(RAD, RAD, 0, 0, 0, 0),
        oblique(1 + (D / L) ** 2, 1.0),
        1.0,
    ),
    (
        "rotation about the isocentre, about the ray",
        lambda: about_isocentre((0, 1, 0), RAD),
        1.0,
        None,
    ),
    (
        "rotation about the isocentre, normal to it",
        lambda: about_isocentre((1, 0, 0), RAD),
        1.0,
        None,
    ),
    (
        "rotation about the isocentre, 45 deg axis",
        lambda: about_isocentre((1, 1, 0), RAD),
        oblique(math.cos(PHI), 1.0),
        None,
    ),
]


@pytest.mark.parametrize("distance", [300.0, D, 1500.0])
def test_metrics_have_the_closed_forms(distance: float) -> None:
    """ProST is diag(I, I/L^2) at the isocentre; SO(4) is diagonal at the midpoint of source and
    isocentre with the anisotropic weights of the module docstring."""
    pose = carm_pose(
        torch.tensor([[0.3, -0.2, 0.1]], dtype=F64), torch.tensor([[0, distance, 0.0]], dtype=F64)
    )
    iso = torch.tensor([0.0, -distance, 0.0], dtype=F64)
    assert torch.allclose(isocentre_in_camera(pose)[0], iso, atol=1e-9)
    scale = torch.tensor([1, 1, 1, L, L, L], dtype=F64)

    def at(centre: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
        shift = torch.eye(6, dtype=F64)
        shift[3:, :3] = hat(centre)  # camera-frame increment of a motion given at the centre
        return scale[:, None] * (shift.T @ metric @ shift) * scale[None, :]

    se3 = at(iso, pose_metric(pose, L, "se3")[0])
    assert torch.allclose(se3, torch.eye(6, dtype=F64), atol=1e-9)
    phi = math.atan(distance / L / 2)
    expected = torch.tensor(
        [
            math.cos(phi / 2) ** 2,
            1.0,
            math.cos(phi / 2) ** 2,
            (math.sin(phi / 2) / math.tan(phi)) ** 2,
            (math.cos(phi) ** 2 / 2) ** 2,
            (math.sin(phi / 2) / math.tan(phi)) ** 2,
        ],
        dtype=F64,
    )
    so4 = at(iso / 2, pose_metric(pose, L, "so4")[0])
    assert torch.allclose(so4, torch.diag(expected), atol=1e-9)
    # ...and not diagonal at the isocentre: rotation and translation are coupled there
    assert at(iso, pose_metric(pose, L, "so4")[0])[0, 5].abs() > 0.01


@pytest.mark.parametrize(
    ("name", "make_gt", "rot_cos", "trans_cos"), CASES, ids=[c[0] for c in CASES]
)
def test_first_order_agreement_per_perturbation(
    name: str, make_gt: Callable[[], torch.Tensor], rot_cos: float | None, trans_cos: float | None
) -> None:
    se3, so4 = both(make_gt())
    for part, expected in ((slice(0, 3), rot_cos), (slice(3, 6), trans_cos)):
        if expected is not None:
            assert cos(se3[:, part], so4[:, part]).item() == pytest.approx(expected, abs=1e-5)
    if rot_cos is None:  # along the ray the lever arm vanishes: no rotation target at all
        for g in (se3, so4):
            assert g[0, :3].norm() < 1e-6 * L * g[0, 3:].norm()


def test_rotation_about_the_isocentre_has_a_translation_target_only_in_so4() -> None:
    """ProST's centre is the isocentre, so a pure rotation about it leaves its translation
    target exactly zero; SO(4) splits at the midpoint, so it asks for the midpoint's lever-arm
    translation ``G_tt (omega x (m - c))``, |.| = TRANS_TRANSVERSE (D/2) / L^2 per radian."""
    se3, so4 = both(about_isocentre((1, 0, 0), RAD))
    assert se3[0, 3:].norm() < 1e-9 * se3[0, :3].norm() / L
    ratio = (L * so4[0, 3:].norm() / so4[0, :3].norm()).item()
    assert ratio == pytest.approx(TRANS_TRANSVERSE * (D / 2) / L / math.cos(PHI), rel=1e-5)
    assert ratio > 0.15


def test_typical_training_starts_get_clearly_different_targets() -> None:
    """Starts drawn like the trainer's (4 deg about the isocentre, 10 mm source offset): the
    translation directions disagree by a wide margin, the rotation directions a little."""
    rot, trans = carm_params(START)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 6, generator=g, dtype=F64)
    gt = carm_pose(rot + z[:, :3] * math.radians(4), trans + z[:, 3:] * 10.0)
    se3, so4 = both(gt, START.expand(256, 4, 4))
    rot_cos, trans_cos = cos(se3[:, :3], so4[:, :3]), cos(se3[:, 3:], so4[:, 3:])
    assert rot_cos.median() < 0.99
    assert trans_cos.median() < 0.7
    assert (trans_cos < 0).float().mean() > 0.1


@pytest.mark.parametrize("scale", [EPS, 1.0])
def test_targets_coincide_in_the_isocentre_frame(scale: float) -> None:
    """The provable coincidence: with the camera axes moved to the isocentre (the start's
    translation then vanishes, u = 0) both metrics are diag(I, b I), so every perturbation
    gets the same per-part directions to first order; at training distances they still agree
    to about 1e-2 (second-order terms). This was the original trainer's frame."""
    rot, trans = carm_params(START)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(256, 6, generator=g, dtype=F64) * scale
    gt = carm_pose(rot + z[:, :3] * math.radians(4), trans + z[:, 3:] * 10.0)
    start = START.expand(256, 4, 4)
    centre = torch.eye(4, dtype=F64).repeat(256, 1, 1)
    centre[:, :3, 3] = isocentre_in_camera(start)
    start_c, gt_c = start @ centre, gt @ centre
    se3 = target_gradient(start_c, gt_c, L, "se3")
    so4 = target_gradient(start_c, gt_c, L, "so4")
    tol = 1e-6 if scale < 1 else 2e-2
    assert cos(se3[:, :3], so4[:, :3]).min() > 1 - tol
    assert cos(se3[:, 3:], so4[:, 3:]).min() > 1 - tol


@pytest.mark.parametrize("kind", ["se3", "so4"])
def test_training_target_is_the_gradient_in_camera_increments(kind: str) -> None:
    rot, trans = carm_params(START)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 6, generator=g, dtype=F64)
    gt = carm_pose(rot + z[:, :3] * 0.1, trans + z[:, 3:] * 30.0)
    start = START.expand(4, 4, 4)
    target = training_target(start, gt, L, kind)  # type: ignore[arg-type]
    c = isocentre_in_camera(gt)

    def half_sq(xi: torch.Tensor) -> torch.Tensor:
        moved = perturb(start, xi)
        if kind == "se3":
            return 0.5 * prost_distance_sq(moved, gt, L, c)
        return 0.5 * so4_distance_sq(so4_embed(moved, L), so4_embed(gt, L))

    h = 1e-6
    for k in range(6):
        step = torch.zeros(4, 6, dtype=F64)
        step[:, k] = h
        fd = (half_sq(step) - half_sq(-step)) / (2 * h)
        assert torch.allclose(target[:, k], fd, rtol=1e-5, atol=1e-9)
    # a small step along -g brings the start closer to the truth
    down = -1e-3 * target / target.norm(dim=-1, keepdim=True)
    assert (half_sq(down) < half_sq(torch.zeros_like(down))).all()


def test_kinds_reduce_to_the_existing_distances() -> None:
    """so4 is the embedding distance of the raw poses (target_gradient); se3 with the centre at
    the source is the source-centred product metric (se3_distance_sq)."""
    rot, trans = carm_params(START)
    gt = carm_pose(rot + 0.05, trans + 7.0)
    assert torch.allclose(
        training_target(START, gt, L, "so4"), target_gradient(START, gt, L, "so4"), atol=1e-12
    )
    zero = torch.zeros(3, dtype=F64)
    assert torch.allclose(
        training_target(START, gt, L, "se3", centre=zero),
        target_gradient(START, gt, L, "se3"),
        atol=1e-12,
    )
    assert prost_distance_sq(START, gt, L, zero).item() == pytest.approx(
        se3_distance_sq(START, gt, L).item()
    )


def test_batch_dtype_and_bad_kind() -> None:
    gt = cam(0.01, 0.02, -0.01, 3.0, -2.0, 5.0)
    out = training_target(START.float(), gt.float(), L, "so4")
    assert out.shape == (1, 6) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown target kind"):
        training_target(START, gt, L, "euclid")  # type: ignore[arg-type]
