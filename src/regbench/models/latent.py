"""Latent geometries that turn an X-ray / DRR embedding pair into a similarity.

Inputs are raw encoder outputs ``e_x`` (X-ray) and ``e_d`` (DRR), each (N,D). Every geometry
gives

* ``distance(e_x, e_d) -> (N,)``: the dissimilarity that training differentiates (``s``);
* ``residual(e_x, e_d) -> (N,D)``: the vector Levenberg-Marquardt minimises; it points from
  the X-ray's point towards the DRR's, so it depends on the pose through ``e_d`` only.

``|residual| == distance`` for the spherical and hyperbolic geometries (true metrics), and
``|residual|^2 == distance`` for the Euclidean one (whose distance is squared, as in ProST).
All gradients stay finite when the two inputs coincide.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


class Latent(ABC):
    """Common interface; see the module docstring for shapes and conventions."""

    name: ClassVar[str]

    @abstractmethod
    def embed(self, e: torch.Tensor) -> torch.Tensor:
        """(N,D) raw embedding -> (N,D) point of the latent manifold."""

    @abstractmethod
    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """(N,D), (N,D) -> (N,) dissimilarity."""

    @abstractmethod
    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """(N,D), (N,D) -> (N,D) residual vector for Levenberg-Marquardt."""


@dataclass(frozen=True)
class SphericalLatent(Latent):
    """Unit sphere: ``z = e / |e|``, ``s = angle(z_x, z_d)`` in [0, pi] (the paper's choice).

    ``s = 2 atan2(|z_x - z_d|, |z_x + z_d|)``: equal to ``arccos(z_x . z_d)`` but accurate and
    with bounded gradients as ``s -> 0`` (arccos has an infinite slope there).
    """

    name: ClassVar[str] = "spherical"

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        return e / _safe_norm(e, keepdim=True)

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        z_x, z_d = self.embed(e_x), self.embed(e_d)
        return 2 * torch.atan2(_safe_norm(z_x - z_d), _safe_norm(z_x + z_d))

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """Log map of ``z_d`` at ``z_x``: tangent at ``z_x``, direction of the geodesic to
        ``z_d``, norm ``s``. Written as ``(s / sin s) w`` with ``w`` the part of
        ``z_d - z_x`` orthogonal to ``z_x`` (``|w| = sin s``), which is smooth at ``s = 0``."""
        z_x, z_d = self.embed(e_x), self.embed(e_d)
        delta = z_d - z_x
        w = delta - (delta * z_x).sum(-1, keepdim=True) * z_x
        s = 2 * torch.atan2(_safe_norm(delta), _safe_norm(z_x + z_d))
        return _x_over_sin(s)[..., None] * w


@dataclass(frozen=True)
class EuclideanLatent(Latent):
    """Plain vectors: ``s = |e_x - e_d|^2`` (squared, not a metric), residual ``e_d - e_x``."""

    name: ClassVar[str] = "euclidean"

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        diff = e_d - e_x
        return (diff * diff).sum(-1)

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return e_d - e_x


@dataclass(frozen=True)
class HyperbolicLatent(Latent):
    """Poincare ball of curvature ``-c`` (radius ``1/sqrt(c)``), points ``exp_0(e)``.

    ``exp_0(v) = tanh(sqrt(c)|v|) v / (sqrt(c)|v|)`` (so ``d(0, exp_0(v)) = 2|v|``), then the
    point is kept ``eps`` inside the boundary. ``clip_norm`` optionally caps ``|e|`` before the
    map (feature clipping: tanh saturates, which would stop gradients).
    Distance ``d(x, y) = (2/sqrt(c)) artanh(sqrt(c) |(-x) (+) y|)`` with Mobius addition (+).
    """

    name: ClassVar[str] = "hyperbolic"
    c: float = 1.0
    clip_norm: float | None = None
    eps: float = 1e-5

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        sqrt_c = math.sqrt(self.c)
        norm = _safe_norm(e, keepdim=True)
        if self.clip_norm is not None:
            e = e * torch.clamp(self.clip_norm / norm, max=1.0)
            norm = _safe_norm(e, keepdim=True)
        x = _tanh_over_x(sqrt_c * norm) * e
        max_norm = (1 - self.eps) / sqrt_c
        return x * torch.clamp(max_norm / _safe_norm(x, keepdim=True), max=1.0)

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        w = self._gyro_difference(e_x, e_d)
        return (2 / math.sqrt(self.c)) * self._artanh(math.sqrt(self.c) * _safe_norm(w))

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """``lambda_x log_x(y)``: the Mobius log map of ``y`` at ``x`` in an orthonormal frame at
        ``x`` (conformal factor ``lambda_x = 2 / (1 - c|x|^2)``); equals
        ``(2/sqrt(c)) artanh(sqrt(c)|w|) w/|w|`` with ``w = (-x) (+) y``, norm = distance."""
        w = self._gyro_difference(e_x, e_d)
        sqrt_c = math.sqrt(self.c)
        w_sq = (w * w).sum(-1)
        return 2 * self._artanh_over_x(sqrt_c * sqrt_c * w_sq)[..., None] * w

    def _gyro_difference(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        """``(-x) (+) y`` for ``x = embed(e_x)``, ``y = embed(e_d)``."""
        x, y = -self.embed(e_x), self.embed(e_d)
        c = self.c
        xy = (x * y).sum(-1, keepdim=True)
        x2 = (x * x).sum(-1, keepdim=True)
        y2 = (y * y).sum(-1, keepdim=True)
        num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
        return num / (1 + 2 * c * xy + c * c * x2 * y2)

    @staticmethod
    def _artanh(a: torch.Tensor) -> torch.Tensor:
        return torch.atanh(a.clamp(max=1 - torch.finfo(a.dtype).eps))

    @classmethod
    def _artanh_over_x(cls, a_sq: torch.Tensor) -> torch.Tensor:
        """``artanh(a) / a`` from ``a^2``; series near 0 keeps the gradient finite."""
        small = a_sq < 1e-6
        a = torch.sqrt(a_sq.clamp_min(1e-6))
        return torch.where(small, 1 + a_sq / 3, cls._artanh(a) / a)


LATENTS: dict[str, type[Latent]] = {
    "spherical": SphericalLatent,
    "euclidean": EuclideanLatent,
    "hyperbolic": HyperbolicLatent,
}


def make_latent(name: str, **kwargs: float | None) -> Latent:
    """Instantiate a geometry by its registry name (``kwargs`` e.g. ``c`` for hyperbolic)."""
    if name not in LATENTS:
        raise ValueError(f"unknown latent geometry {name!r}; choose from {sorted(LATENTS)}")
    return LATENTS[name](**kwargs)


def _safe_norm(v: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Euclidean norm over the last dim whose gradient is 0 (not NaN) at ``v = 0``."""
    sq = (v * v).sum(-1, keepdim=keepdim)
    return torch.sqrt(sq.clamp_min(torch.finfo(v.dtype).tiny))


def _x_over_sin(s: torch.Tensor) -> torch.Tensor:
    """``s / sin(s)`` for ``s`` in [0, pi), smooth at 0 (capped near the antipode)."""
    small = s < 1e-3
    s_safe = torch.where(small, torch.ones_like(s), s)
    sin = torch.sin(s_safe).clamp_min(torch.finfo(s.dtype).eps)
    return torch.where(small, 1 + s * s / 6, s_safe / sin)


def _tanh_over_x(a: torch.Tensor) -> torch.Tensor:
    """``tanh(a) / a`` for ``a >= 0``, smooth at 0."""
    small = a < 1e-3
    a_safe = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, 1 - a * a / 3, torch.tanh(a_safe) / a_safe)
