"""PoseNet: the regressor's pose, unrefined."""

from __future__ import annotations

import torch

from regbench.methods.base import Method, Trace


class PoseNet(Method):
    name = "posenet"

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        return init, 0
