"""What one ``regbench bench`` call measures: its sections, csv columns and settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTIONS = (
    "render", "jacobian", "convergence", "minimum", "capture", "training", "seeds", "latents",
    "dag",
)  # fmt: skip
COLUMNS = ["section", "name", "size", "metric", "value", "unit", "device"]
REFERENCE = "diffdrr trilinear"  # the renderer every rendering time is compared with


@dataclass(frozen=True)
class BenchSettings:
    """One bench run: the problem sizes of the command line and, from the validated config,
    the detector, pose prior, rendering and convergence settings of the workflow, so the bench
    measures the problems the workflow solves instead of a copy of their defaults."""

    out_dir: Path
    sections: tuple[str, ...]
    # render and jacobian: one fixed CT spacing and samples per ray across the sizes
    sizes: tuple[int, ...]
    spacing_mm: float
    n_points: int
    repeats: int
    jacobian_size: int
    # convergence: the embedded subject as the workflow registers it
    convergence_spacing_mm: float
    convergence_n_points: int
    convergence_size: int
    n_xrays: int
    lm_iterations: int
    seed: int
    diffpose: dict
    # every section's CT and detector
    detector: dict
    prior: dict
    min_label_voxels: int
    bone_attenuation: float
    # minimum, training and dag: a finished run
    benchmarks: Path | None = None
    runs: Path | None = None
    minimum_xrays: int = 10
    training_steps: tuple[int, ...] = (0, 30, 60, 120)
    training_variant: str = "ours-so4"
    seed_variants: tuple[str, ...] = ("ours-so4", "abl-euclidean", "abl-hyperbolic")
    training_seeds: int = 3
    capture_methods: tuple[str, ...] = ("ours-so4", "abl-euclidean", "abl-hyperbolic")
    capture_offsets: tuple[tuple[float, float], ...] = ((5.0, 10.0), (10.0, 20.0), (20.0, 40.0))
    capture_lm_iterations: int | None = None
    latent_model: str = "ours-so4"
    latent_geometries: tuple[str, ...] = ("spherical", "euclidean", "hyperbolic")
    latent_lm_iterations: int | None = None
    latent_offset: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, cfg: dict, **options: Any) -> BenchSettings:
        """``cfg``: a config validated against the schema (so every key is filled);
        ``options``: the command line's fields."""
        embedded = cfg["datasets"]["embedded"]
        return cls(
            convergence_spacing_mm=embedded["spacing_mm"],
            convergence_n_points=cfg["render"]["n_points"],
            convergence_size=int(cfg["geometry"]["height"]),
            seed=cfg["seed"],
            diffpose=cfg["diffpose"],
            detector=cfg["geometry"],
            prior=cfg["prior"],
            min_label_voxels=embedded["min_label_voxels"],
            bone_attenuation=cfg["render"]["bone_attenuation"],
            **options,
        )
