"""The learned-similarity methods of the paper's tables, as combinations of components."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One learned-similarity method: which volume branch, latent geometry, target and refiner,
    and (baselines with an architecture of their own) which model and training loss."""

    volume: str  # "e3nn" | "cnn3d" | "identity"
    latent: str  # "spherical" | "euclidean" | "hyperbolic" | "learned" (a trained head)
    target: str  # "se3" | "so4": the pose distance training matches or regresses
    refiner: str  # "lm" | "prost-m" | "prost-t" (methods/prost.py) | "sgd-cyclic" (SOPI) | "adam" (CDReg)
    # "latent": SimilarityModel (timm encoders, latent geometry); "sopi", "cdreg": the
    # baselines' own networks (regbench.models.sopi, regbench.models.cdreg).
    model: str = "latent"
    # "matching": unit rotational and translational parts of the pose gradient (ours, ProST
    # MICCAI 2020; plus the unrolled LM for "lm" refiners); "geodesic": the squared SE(3)
    # geodesic distance between the similarity's and the target's gradient vectors (ProST TMI
    # 2023); "convex": CDReg's regression of the distance to a convex function of the pose
    # distance.
    loss: str = "matching"

    @property
    def own_section(self) -> bool:
        """Whether the method has a config section of its own (named as the method) whose
        ``training`` part overrides ``similarity``'s keys."""
        return self.model != "latent"


VARIANTS: dict[str, Variant] = {
    "ours-se3": Variant("e3nn", "spherical", "se3", "lm"),
    "ours-so4": Variant("e3nn", "spherical", "so4", "lm"),
    "abl-euclidean": Variant("e3nn", "euclidean", "so4", "lm"),
    "abl-hyperbolic": Variant("e3nn", "hyperbolic", "so4", "lm"),
    "abl-no-ecnn": Variant("identity", "spherical", "so4", "lm"),
    "abl-cnn3d": Variant("cnn3d", "spherical", "so4", "lm"),
    "prost-m": Variant("cnn3d", "euclidean", "se3", "prost-m"),
    "prost-t": Variant("cnn3d", "euclidean", "se3", "prost-t", loss="geodesic"),
    # SOPI (Chen et al., ICASSP 2024): the DRR alone through two composite encoders, their
    # multi-level feature MSE (a Euclidean latent) trained by gradient matching on ProST's SE(3)
    # geodesic; SGD with momentum and a cyclic learning rate; its own initialiser.
    "sopi": Variant("identity", "euclidean", "se3", "sgd-cyclic", model="sopi"),
    # CDReg (Chen et al., ISBI 2024): 3D CNN features projected along the rays, dual-branch
    # (low / high frequency) encoders, a learned distance regressed to a convex function of the
    # SE(3) geodesic distance plus the correlation-driven decomposition loss; Adam refinement.
    "cdreg": Variant("cnn3d", "learned", "se3", "adam", model="cdreg", loss="convex"),
}


def training_seed_tag(name: str) -> str:
    """The tag of variant ``name``'s training seed. The paper's method and its ablations (the
    LM-refined variants) share one: the same initial weights wherever their networks agree and
    the same training X-rays and starts, so Table 3 compares the ablated component, not two
    random draws of training. Baselines keep a seed of their own."""
    return "ours-and-ablations" if VARIANTS[name].refiner == "lm" else name
