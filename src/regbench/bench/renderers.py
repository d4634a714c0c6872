"""Sections ``render`` and ``jacobian``: the renderers and pose Jacobians against diffdrr."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from regbench.bench.common import median_seconds, row, view_pose
from regbench.bench.settings import REFERENCE
from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_params, carm_pose, perturb
from regbench.rendering.compiled_projector import FastProjector
from regbench.rendering.renderer import Renderer, make_renderer
from regbench.rendering.torch_projector import FeatureProjector

log = logging.getLogger(__name__)


def render_rows(
    prepared: Prepared,
    n_points: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    bone_attenuation: float,
) -> list[dict]:
    """Section ``render`` at the prepared subject's detector size."""
    size = int(prepared.geometry["height"])
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    siddon = make_renderer(prepared, bone_attenuation, "siddon", device)
    drr = trilinear.drr
    pose = view_pose().to(device)
    rot0, trans0 = carm_params(pose.float())

    def diffdrr_backward(renderer: Renderer) -> Callable[[], None]:
        def run() -> None:
            rot = rot0.clone().requires_grad_(True)
            trans = trans0.clone().requires_grad_(True)
            renderer.render(carm_pose(rot, trans), n_points).sum().backward()

        return run

    density = drr.density.to(dtype)
    torch_proj = FeatureProjector.from_drr(drr).to(device)
    torch_table = torch_proj.prepare(density)
    cases: dict[str, dict[str, Callable[[], object]]] = {
        REFERENCE: {
            "forward": lambda: trilinear.render(pose, n_points),
            "forward+backward": diffdrr_backward(trilinear),
        },
        "diffdrr siddon": {
            "forward": lambda: siddon.render(pose, n_points),
            "forward+backward": diffdrr_backward(siddon),
        },
        "regbench torch": {
            "forward": lambda: torch_proj(torch_table, pose, n_points),
            "forward+jacobian": lambda: torch_proj.forward_and_jacobian(
                torch_table, pose, n_points
            ),
        },
    }
    if device.type == "cpu":
        fast = FastProjector.from_drr(drr)
        fast_table = fast.prepare(density)

        def fast_backward() -> None:
            rot = rot0.double().clone().requires_grad_(True)
            trans = trans0.double().clone().requires_grad_(True)
            fast(fast_table, carm_pose(rot, trans), n_points).sum().backward()

        cases["regbench compiled"] = {
            "forward": lambda: fast(fast_table, pose, n_points),
            "forward+backward": fast_backward,
            "forward+jacobian": lambda: fast.forward_and_jacobian(fast_table, pose, n_points),
        }

    with torch.no_grad():
        reference = trilinear.render(pose, n_points).double()
    rows = []
    samples = size * size * n_points
    for name, modes in cases.items():
        forward = modes["forward"]
        with torch.no_grad():
            image = forward().double().reshape(reference.shape)
        rel = float((image - reference).norm() / reference.norm())
        rows.append(row("render", name, size, "relative L2 to " + REFERENCE, rel, "", device))
        for mode, fn in modes.items():
            grad = mode != "forward"
            with torch.set_grad_enabled(grad):
                seconds = median_seconds(fn, repeats, device)
            rows += [
                row("render", name, size, f"{mode} ms", 1e3 * seconds, "ms", device),
                row("render", name, size, f"{mode} images/s", 1 / seconds, "1/s", device),
                row(
                    "render", name, size, f"{mode} Msamples/s", samples / seconds / 1e6, "", device
                ),
            ]
        log.info("render %s %d px done", name, size)
    return rows


def jacobian_rows(
    prepared: Prepared, n_points: int, repeats: int, device: torch.device, bone_attenuation: float
) -> list[dict]:
    """Section ``jacobian``: seconds for one (H*W, 6) pose Jacobian."""
    size = int(prepared.geometry["height"])
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    drr = trilinear.drr
    pose = view_pose().to(device)
    torch_proj = FeatureProjector.from_drr(drr).to(device)
    torch_table = torch_proj.prepare(drr.density)
    rot0, trans0 = carm_params(pose.float())

    def finite_differences() -> None:
        with torch.no_grad():
            for k in range(6):
                for sign in (1.0, -1.0):
                    xi = torch.zeros(1, 6, dtype=pose.dtype, device=device)
                    xi[0, k] = sign * 1e-3
                    trilinear.render(perturb(pose, xi), n_points)

    def one_pixel_backward() -> None:
        rot = rot0.clone().requires_grad_(True)
        trans = trans0.clone().requires_grad_(True)
        trilinear.render(carm_pose(rot, trans), n_points)[0, 0, size // 2, size // 2].backward()

    cases: dict[str, tuple[Callable[[], object], float]] = {
        "per-ray analytic (torch)": (
            lambda: torch_proj.forward_and_jacobian(torch_table, pose, n_points),
            1.0,
        ),
        "forward-mode autodiff (torch projector)": (
            lambda: torch_proj.pose_jacobian(torch_table, pose, n_points, method="forward"),
            1.0,
        ),
        "central differences (diffdrr, 12 renders)": (finite_differences, 1.0),
        # One backward per pixel: measured for one pixel, times the number of pixels.
        "reverse mode (diffdrr, extrapolated)": (one_pixel_backward, float(size * size)),
    }
    if device.type == "cpu":
        fast = FastProjector.from_drr(drr)
        fast_table = fast.prepare(drr.density)
        cases = {
            "per-ray analytic (compiled)": (
                lambda: fast.forward_and_jacobian(fast_table, pose, n_points),
                1.0,
            ),
            **cases,
        }
    rows = []
    for name, (fn, factor) in cases.items():
        seconds = median_seconds(fn, 1 if factor > 1 else repeats, device) * factor
        rows.append(row("jacobian", name, size, "seconds", seconds, "s", device))
        log.info("jacobian %s: %.4f s", name, seconds)
    return rows
