"""Pieces every section shares: one csv row, the device's name, a timer, the bench subject."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from regbench.data.embedded import prepare_embedded
from regbench.data.prepare import geometry_from_config
from regbench.data.subject import Prepared
from regbench.geometry.poses import carm_pose


def row(section, name, size, metric, value, unit, device) -> dict:
    return {
        "section": section,
        "name": name,
        "size": int(size),
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "device": device_name(device),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` after one warm-up call (compilation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_subject(spacing_mm: float, size: int, detector: dict, min_label_voxels: int) -> Prepared:
    """The bundled chest CT at ``spacing_mm`` with the config's ``detector`` at ``size`` x
    ``size`` pixels."""
    subject = prepare_embedded(spacing_mm=spacing_mm, min_label_voxels=min_label_voxels)
    geometry = geometry_from_config({**detector, "height": size, "width": size})
    return Prepared(subject.ct, subject.affine, subject.landmarks, geometry)


def view_pose() -> torch.Tensor:
    """A pose near the prior's mean, slightly rotated (no axis-aligned special case)."""
    rot = torch.tensor([[0.05, -0.03, 0.02]], dtype=torch.float64)
    return carm_pose(rot, torch.tensor([[3.0, 850.0, -2.0]], dtype=torch.float64))
