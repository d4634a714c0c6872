"""Registry of registration methods, in the order of the paper's tables.

Method classes are imported when a method is built, so reading the registry (the Snakefile
does) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from regbench.errors import InputError
from regbench.models.variants import VARIANTS

if TYPE_CHECKING:  # the registry is read by the Snakefile: no torch at planning time
    from regbench.methods.base import Context, Method

_CLASSES: dict[str, str] = {
    "posenet": "regbench.methods.posenet:PoseNet",
    "diffpose": "regbench.methods.diffpose:DiffPose",
    "bobyqa": "regbench.methods.bobyqa:Bobyqa",
    "dflnet": "regbench.methods.dflnet:DFLNet",
    "scr-reg": "regbench.methods.scr_reg:SCRReg",
    "psss-reg": "regbench.methods.psss_reg:PSSSReg",
    **{name: "regbench.methods.learned:LearnedSimilarity" for name in VARIANTS},
}
IMPLEMENTED: frozenset[str] = frozenset(_CLASSES)
# Methods that learn a model of their own per subject (not a learned similarity): the class
# provides ``train(prepared, settings, seed, out, log_csv, device)`` and
# ``load_model(path, settings, device)``; `regbench train-method` writes models/{method}.pt.
OWN_MODELS: frozenset[str] = frozenset({"dflnet", "scr-reg", "psss-reg"})

# Every method of the paper's tables; those not in IMPLEMENTED get a "not implemented" row.
ALL_METHODS: tuple[str, ...] = (
    "psss-reg",
    "posenet",
    "dflnet",
    "scr-reg",
    "diffpose",
    "bobyqa",
    "prost-m",
    "prost-t",
    "sopi",
    "cdreg",
    "ours-se3",
    "ours-so4",
    "abl-hyperbolic",
    "abl-euclidean",
    "abl-no-ecnn",
    "abl-cnn3d",
)

# The ablations proper, and the rows of the paper's ablation study (Table 3): its two variants
# and the ablations, in the paper's order.
ABLATIONS: tuple[str, ...] = tuple(m for m in ALL_METHODS if m.startswith("abl-"))
ABLATION_METHODS: tuple[str, ...] = (
    tuple(m for m in ALL_METHODS if m.startswith("ours-")) + ABLATIONS
)


class UnknownMethodError(InputError):
    pass


def check_method(name: str) -> None:
    if name not in ALL_METHODS:
        raise UnknownMethodError(
            f"unknown method '{name}'; known methods: {', '.join(ALL_METHODS)}"
        )
    if name not in IMPLEMENTED:
        raise UnknownMethodError(f"method '{name}' is not implemented yet")


def needs_similarity(name: str) -> bool:
    """Whether a method registers on a learned similarity (a trained model per variant)."""
    return name in VARIANTS


def needs_own_model(name: str) -> bool:
    """Whether a method registers with a model of its own, trained per subject."""
    return name in OWN_MODELS


def method_class(name: str) -> type[Method]:
    check_method(name)
    return resolve(_CLASSES[name])


def resolve(spec: str):
    """The object a ``"module:name"`` spec names, its module imported on use."""
    module, name = spec.split(":")
    return getattr(import_module(module), name)


def build_method(name: str, context: Context) -> Method:
    cls = method_class(name)
    if needs_similarity(name):
        return cls(context, name)
    return cls(context)
