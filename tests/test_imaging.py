"""The learned similarity's imaging model: detector blur and display gamma, and their fit."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import pose_deg
from torchvision.transforms.functional import gaussian_blur

from regbench.models.imaging import (
    Imaging,
    blur,
    compose_drr,
    effective_sigma,
    fit_imaging,
    linearise_display,
)
from regbench.models.residual import LatentResidual
from regbench.rendering.simulator import degrade
from regbench.train.similarity import build_similarity_model


def test_blur_is_torchvisions_gaussian_blur_where_the_kernels_agree():
    """At sigma 1.4 torchvision's kernel has our 9 taps: the same weights, reflecting borders."""
    images = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0))
    ours = blur(images, torch.tensor([1.4, 1.4]))
    assert torch.allclose(ours, gaussian_blur(images, [9, 9], [1.4, 1.4]), atol=1e-6)


def test_blur_is_per_image_and_zero_sigma_is_the_identity():
    images = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    both = blur(images, torch.tensor([0.0, 0.9]))
    assert torch.allclose(both[0], images[0], atol=1e-12)
    assert torch.allclose(both[1:], blur(images[1:], torch.tensor([0.9])))
    constant = torch.full((1, 1, 8, 8), 3.0, dtype=torch.float64)
    assert torch.allclose(blur(constant, torch.tensor([1.1])), constant)


def test_compose_drr_blurs_the_bone_weighted_sum():
    parts = torch.rand(1, 2, 12, 12, dtype=torch.float64)
    drr = compose_drr(parts, torch.tensor([1.6]), torch.tensor([0.7]))
    assert torch.allclose(drr, blur(parts[:, :1] + 1.6 * parts[:, 1:], torch.tensor([0.7])))
    assert torch.equal(compose_drr(parts, torch.tensor([1.0]), None), parts[:, :1] + parts[:, 1:])


def test_effective_sigma_of_the_simulators_truncated_kernels():
    assert effective_sigma(0.3) == 0.0  # a 1-tap kernel: no blur at all
    w = math.exp(-1 / (2 * 0.6**2))  # 0.6 px: three taps
    assert effective_sigma(0.6) == pytest.approx(math.sqrt(2 * w / (1 + 2 * w)), rel=1e-12)
    assert effective_sigma(3.0) == pytest.approx(3.0, rel=0.02)


def test_linearise_display_undoes_the_gamma():
    linear = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    gamma = torch.tensor([0.7, 1.0, 1.6], dtype=torch.float64)
    shown = linear ** gamma[:, None, None, None]
    assert torch.allclose(linearise_display(shown, gamma), linear, atol=1e-12)
    assert linearise_display(shown, None) is shown


def test_fit_imaging_finds_the_minimum_on_the_fine_grid():
    blur_px, gamma = fit_imaging(lambda b, g: (b - 0.55) ** 2 + (g - 1.23) ** 2)
    assert blur_px == pytest.approx(0.55) and gamma == pytest.approx(1.225)


def test_fit_at_the_truth_recovers_the_xrays_blur_and_gamma(similarity_setup, similarity_settings):
    """A noiseless X-ray with the simulator's blur and gamma: the fit at its true pose finds
    the blur of the kernel the simulator applied and the gamma (untrained model, image terms)."""
    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", similarity_settings["similarity"])
    gt = pose_deg((1.0, -2.0, 0.5), (2.0, 850.0, -3.0))
    with torch.no_grad():
        model.eval().feature_gain.zero_()
        clean = compose_drr(similarity_setup.drr(gt), torch.tensor([1.0]), None)
        xray = degrade(clean, torch.Generator().manual_seed(1), 1e12, 3.0, 0.8, 1.3, 1).float()
        residual = LatentResidual(
            model, similarity_setup, xray, model.features(similarity_setup.density)
        )
        fitted = residual.fit_imaging(gt)
    assert float(fitted.blur[0]) == pytest.approx(effective_sigma(0.8), abs=0.06)
    assert float(fitted.gamma[0]) == pytest.approx(1.3, abs=0.06)
    assert residual.imaging is fitted


def test_jacobian_with_an_imaging_model_matches_central_differences(
    similarity_setup, similarity_settings
):
    """The LM Jacobian through the blurred DRR channel and the linearised X-ray."""
    import copy

    from regbench.geometry.poses import perturb

    torch.manual_seed(0)
    model = build_similarity_model("ours-so4", similarity_settings["similarity"])
    fine = copy.copy(similarity_setup)
    fine.drr_table = fine.drr_projector.prepare(fine.drr_table.volume.double())
    imaging = Imaging(torch.tensor([0.7], dtype=torch.float64), torch.tensor([1.3]))
    with torch.no_grad():
        model.eval().feature_gain.zero_()
        xray = fine.drr(pose_deg()).sum(1, keepdim=True)
        xray = xray / xray.max()
        residual = LatentResidual(model, fine, xray, model.features(fine.density).double(), imaging)
    pose = pose_deg((2.0, 1.0, -1.0), (5.0, 845.0, -4.0))
    _, jac = residual.linearise(pose)
    for k in range(6):
        dxi = torch.zeros(1, 6, dtype=torch.float64)
        dxi[0, k] = 1e-6 if k < 3 else 1e-4
        fd = (residual(perturb(pose, dxi)) - residual(perturb(pose, -dxi))) / (2 * dxi[0, k])
        assert (jac[0, :, k] - fd[0]).norm() / fd[0].norm() < 0.01, k
