"""Section ``convergence``: LM against DiffPose's Adam on the same multiscale-NCC problems."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from regbench import evaluate
from regbench.bench.common import row
from regbench.data.subject import Prepared
from regbench.drift import offset_start
from regbench.geometry.priors import PosePrior
from regbench.methods.base import Context, Trace
from regbench.methods.diffpose import DiffPose
from regbench.methods.ncc_lm import MultiscaleNCCResidual, register_lm_ncc
from regbench.rendering.compiled_projector import FastProjector
from regbench.rendering.renderer import make_renderer
from regbench.rendering.torch_projector import FeatureProjector


def convergence_rows(
    prepared: Prepared,
    n_points: int,
    n_xrays: int,
    seed: int,
    diffpose_settings: dict,
    lm_iterations: int,
    device: torch.device,
    prior: PosePrior,
    bone_attenuation: float,
) -> tuple[list[dict], pd.DataFrame]:
    """Section ``convergence``; also returns every trajectory (for the figure-minded)."""
    trilinear = make_renderer(prepared, bone_attenuation, "trilinear", device)
    drr = trilinear.drr
    compiled = device.type == "cpu"  # the compiled projector is CPU-only
    projector = (FastProjector if compiled else FeatureProjector).from_drr(drr).to(device)
    table = projector.prepare(drr.density)
    generator = torch.Generator().manual_seed(seed)
    truths = prior.sample(n_xrays, generator)
    points = prepared.points
    length = float(np.linalg.norm(points - points.mean(0), axis=1).mean())
    patch = diffpose_settings["patch_size"]

    def lm(target: torch.Tensor, init: torch.Tensor, trace: Trace) -> None:
        register_lm_ncc(
            lambda pose: projector.forward_and_jacobian(table, pose, n_points),
            lambda pose: projector(table, pose, n_points),
            MultiscaleNCCResidual(target, patch),
            init,
            lm_iterations,
            length,
            callback=trace.record,
        )

    def adam(renderer: str) -> Callable[[torch.Tensor, torch.Tensor, Trace], object]:
        context = Context(
            make_renderer(prepared, bone_attenuation, renderer, device),
            None,
            n_points,
            {"diffpose": diffpose_settings},
        )
        return DiffPose(context).refine

    kind = "compiled" if compiled else "torch"
    optimizers = {
        f"LM ({kind} projector)": lm,
        "Adam, DiffPose recipe (diffdrr)": adam("trilinear"),
    }
    if compiled:
        optimizers["Adam, DiffPose recipe (compiled projector)"] = adam("compiled")
    trajectories = []
    for i in tqdm(range(n_xrays), desc="convergence", mininterval=5):
        truth = truths[i]
        with torch.no_grad():
            target = trilinear.render(truth[None], n_points)
        init = offset_start(truth, generator, 5.0, 10.0)
        for name, optimize in optimizers.items():
            trace = Trace()
            trace.record(0, init)
            optimize(target, init, trace)
            poses = np.stack([p.numpy() for p in trace.poses])
            errors = evaluate.mtre(poses, truth.numpy()[None].repeat(len(poses), 0), points)
            trajectories.append(
                pd.DataFrame(
                    {
                        "xray": i,
                        "optimizer": name,
                        "iteration": trace.iterations,
                        "seconds": trace.seconds,
                        "mtre_mm": errors,
                    }
                )
            )
    traj = pd.concat(trajectories, ignore_index=True)
    size = int(prepared.geometry["height"])
    rows = []
    for name, group in traj.groupby("optimizer", sort=False):
        reached = group[group["mtre_mm"] < 1.0].groupby("xray").first()
        final = group.groupby("xray").last()
        per_iteration = (final["seconds"] - group.groupby("xray").first()["seconds"]) / final[
            "iteration"
        ].clip(lower=1)
        values = {
            "CT spacing (mm)": (float(abs(prepared.affine[0, 0])), "mm"),
            "samples per ray": (float(n_points), ""),
            "X-rays": (float(group["xray"].nunique()), ""),
            "reached sub-mm (%)": (100.0 * len(reached) / group["xray"].nunique(), "%"),
            "median seconds to sub-mm": (_median_or_inf(reached["seconds"], final), "s"),
            "median iterations to sub-mm": (_median_or_inf(reached["iteration"], final), ""),
            "median final mTRE": (float(final["mtre_mm"].median()), "mm"),
            "median seconds per iteration": (float(per_iteration.median()), "s"),
        }
        rows += [
            row("convergence", name, size, metric, value, unit, device)
            for metric, (value, unit) in values.items()
        ]
    return rows, traj


def _median_or_inf(reached: pd.Series, final: pd.DataFrame) -> float:
    """Median over all X-rays, counting those that never reached sub-mm as +inf."""
    values = np.full(len(final), math.inf)
    values[: len(reached)] = reached.to_numpy(float)
    return float(np.median(values))
