"""The learned-similarity methods of the paper's tables, as combinations of components."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One learned-similarity method: which volume branch, latent geometry, target and refiner."""

    volume: str  # "e3nn" | "cnn3d" | "identity"
    latent: str  # "spherical" | "euclidean" | "hyperbolic"
    target: str  # "se3" | "so4": the pose distance whose gradient training matches
    refiner: str  # "lm" (Levenberg-Marquardt) | "prost-m" | "prost-t" (methods/prost.py)
    # How the similarity's pose gradient is matched to the target's in training:
    # "direction": unit rotational and translational parts (ProST MICCAI 2020, and ours);
    # "geodesic": squared SE(3) geodesic distance between the two gradient vectors (ProST TMI).
    matching: str = "direction"


VARIANTS: dict[str, Variant] = {
    "ours-se3": Variant("e3nn", "spherical", "se3", "lm"),
    "ours-so4": Variant("e3nn", "spherical", "so4", "lm"),
    "abl-euclidean": Variant("e3nn", "euclidean", "so4", "lm"),
    "abl-hyperbolic": Variant("e3nn", "hyperbolic", "so4", "lm"),
    "abl-no-ecnn": Variant("identity", "spherical", "so4", "lm"),
    "abl-cnn3d": Variant("cnn3d", "spherical", "so4", "lm"),
    "prost-m": Variant("cnn3d", "euclidean", "se3", "prost-m"),
    "prost-t": Variant("cnn3d", "euclidean", "se3", "prost-t", matching="geodesic"),
}
