"""Registry of registration methods, in the order of the paper's tables."""

from __future__ import annotations

from regbench.errors import InputError
from regbench.methods.base import Context, Method
from regbench.methods.bobyqa import Bobyqa
from regbench.methods.diffpose import DiffPose
from regbench.methods.posenet import PoseNet

IMPLEMENTED: dict[str, type[Method]] = {
    "posenet": PoseNet,
    "diffpose": DiffPose,
    "bobyqa": Bobyqa,
}

# Every method of the paper's tables; those not in IMPLEMENTED get a "not implemented" row.
ALL_METHODS: tuple[str, ...] = (
    "psss-reg",
    "posenet",
    "dflnet",
    "scr-reg",
    "diffpose",
    "bobyqa",
    "prost",
    "sopi",
    "cdreg",
    "ours-se3",
    "ours-so4",
    "abl-hyperbolic",
    "abl-euclidean",
    "abl-no-ecnn",
    "abl-cnn3d",
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


def build_method(name: str, context: Context) -> Method:
    check_method(name)
    return IMPLEMENTED[name](context)
