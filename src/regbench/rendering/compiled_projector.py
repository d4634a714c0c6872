"""A fused CPU ray marcher (numba) with the geometry and quadrature of :class:`FeatureProjector`.

:class:`FastProjector` renders exactly what
:class:`~regbench.rendering.torch_projector.FeatureProjector` renders (same rays, same per-pose
alpha range and ``n_points`` samples, same rectangle rule, same trilinear blending towards zero
over the outermost half voxel, same one-sided gradients at voxel planes); only the per-ray sums
are computed by a compiled kernel, parallel over rays, instead of by gathers of torch tensors.
What makes it fast on a CPU: one pass over the samples with the eight corners read straight from a
channel-last padded volume (no intermediate tensors); the volume laid out with the axis the rays
run along most as the contiguous one (consecutive samples share cache lines); unsigned indices (no
wrap-around checks); and per-ray clipping: each ray only visits the samples whose interpolation
weights can be non-zero (the alpha range is shared by all rays of a pose, so rays through a corner
of the volume skip most samples). Pose derivatives are :class:`FeatureProjector`'s too, the
per-pose alpha range's dependence on the pose included (a range passed in as ``alpha_range`` is a
constant): moving the range's ends slides the samples along the rays, and that term comes from the
per-ray sums the kernel forms anyway (values, gradients, alpha-weighted gradients), so it costs no
extra pass over the samples.

What differs from :class:`FeatureProjector`:

* CPU only; volumes are float32 or float64 (the kernel computes in the volume's dtype; poses
  are cast to it, as :class:`FeatureProjector` does).
* A prepared volume (:meth:`FastProjector.prepare`) is a constant. A tensor that requires grad,
  rendered as it is, is differentiated once: the gradient w.r.t. its voxels comes from an
  adjoint kernel (each ray's incoming gradient scattered onto its samples' eight corners with
  the trilinear weights, parallel over channels), so learned feature volumes train through this
  projector too.
* Poses are differentiable once: :meth:`FastProjector.forward` backpropagates to the pose
  through the per-ray gradient sums (kernel with gradients in the forward pass, a few tensor
  ops in the backward pass). No double backward, no forward-mode autodiff (``pose_jacobian``
  supports ``method="analytic"`` only); :meth:`FastProjector.forward_and_jacobian` returns
  plain tensors (no autograd graph).

The kernels are compiled on first use (a few seconds) and cached on disk (``cache=True``), so
later processes load them. They run on ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numba
import numpy as np
import torch
from numba import njit, prange
from torch.autograd.function import once_differentiable

from regbench.rendering.torch_projector import (
    _PAD,
    FeatureProjector,
    VolumeTable,
    _as_batched_volume,
    range_derivatives,
    sample_alphas,
)

# No fast-math flags: with them (reassociation, FMA contraction), a parallel kernel compiled in
# the process and the same kernel loaded from numba's on-disk cache rounded differently, so a
# fresh clone's results depended on which job compiled first (a regressor's training drifted
# apart after 16 steps); tests/test_kernel_cache.py checks the two agree bit for bit.
_FASTMATH = False


@dataclass(frozen=True)
class FastVolume:
    """A volume for :class:`FastProjector` (see :meth:`FastProjector.prepare`); build it once
    and render it at many poses.

    The kernels read the volume zero-padded by ``_PAD`` voxels on each side, channel-last, with
    the spatial axis the rays run along most as the contiguous one after the channels
    (consecutive samples then share cache lines). :meth:`layout` builds that copy on first use
    and keeps it: at most three copies, one per axis (poses near one view need one).
    """

    volume: torch.Tensor  # (B,C,X,Y,Z), CPU, float32 or float64, no grad; the layouts' source
    # The tensor ``volume`` was detached from when the volume is to be differentiated (a volume
    # rendered once, e.g. features in training); None for a constant.
    source: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _layouts: dict[int, tuple[np.ndarray, tuple[int, int, int, int]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the (unpadded) volume."""
        return tuple(self.volume.shape[2:])

    @property
    def batch(self) -> int:
        """Number of volumes: 1, or one per pose."""
        return self.volume.shape[0]

    @property
    def channels(self) -> int:
        return self.volume.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.volume.dtype

    @property
    def device(self) -> torch.device:
        return self.volume.device

    @property
    def requires_grad(self) -> bool:
        return self.source is not None and self.source.requires_grad

    def layout(self, axis: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The padded channel-last voxels with spatial ``axis`` (0, 1, 2) contiguous after the
        channels: a flat array, and the element strides of x, y and z and of one volume (0 for
        a single volume)."""
        if axis not in self._layouts:
            order = [*(a for a in range(3) if a != axis), axis]  # slowest to fastest
            b, c = self.volume.shape[:2]
            data = self.volume.new_zeros(b, *(self.shape[a] + 2 * _PAD for a in order), c)
            interior = (slice(None), *([slice(_PAD, -_PAD)] * 3))
            data[interior] = self.volume.permute(0, *(2 + a for a in order), 1)
            strides = tuple(data.stride(1 + order.index(a)) for a in range(3))
            per_volume = data.stride(0) if b > 1 else 0
            self._layouts[axis] = (data.reshape(-1).numpy(), (*strides, per_volume))
        return self._layouts[axis]

    def from_layout(self, flat: np.ndarray, axis: int) -> torch.Tensor:
        """The inverse of :meth:`layout` for an array of its size (a gradient w.r.t. the
        padded voxels): the interior as (B,C,X,Y,Z); the padding is dropped."""
        order = [*(a for a in range(3) if a != axis), axis]
        b, c = self.volume.shape[:2]
        data = torch.from_numpy(flat).reshape(b, *(self.shape[a] + 2 * _PAD for a in order), c)
        interior = data[(slice(None), *([slice(_PAD, -_PAD)] * 3))]
        return interior.permute(0, 4, *(1 + order.index(a) for a in range(3)))


class FastProjector(FeatureProjector):
    """:class:`FeatureProjector` with the ray sums computed by a compiled CPU kernel.

    Same constructor, :meth:`from_drr`, geometry methods, shapes and results; see the module
    docstring for what is not supported (volume gradients, double backward, forward mode).
    """

    @staticmethod
    def prepare(volume: torch.Tensor) -> FastVolume:  # type: ignore[override]
        """A volume ((X,Y,Z), (C,X,Y,Z) or (N,C,X,Y,Z)) for repeated rendering (a copy of it:
        later in-place changes to ``volume`` do not show)."""
        return FastVolume(_constant_volume(volume).clone())

    def forward_and_jacobian(
        self,
        volume: torch.Tensor | FastVolume,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`FeatureProjector.forward_and_jacobian`, as plain (non-differentiable)
        tensors."""
        with torch.no_grad():
            return super().forward_and_jacobian(volume, pose, n_points, alpha_range)

    def pose_jacobian(
        self,
        volume: torch.Tensor | FastVolume,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None = None,
        method: Literal["analytic", "forward"] = "analytic",
    ) -> torch.Tensor:
        """:meth:`FeatureProjector.pose_jacobian`; ``method="analytic"`` only."""
        if method == "forward":
            raise ValueError(
                "FastProjector has no forward-mode autodiff: use method='analytic' "
                "(or FeatureProjector for the forward-mode check)"
            )
        return super().pose_jacobian(volume, pose, n_points, alpha_range, method)

    # ------------------------------------------------------------------ internals

    def _table(self, volume: torch.Tensor | FastVolume, n_samples: int) -> FastVolume:
        if isinstance(volume, FastVolume):
            return volume
        if isinstance(volume, VolumeTable):
            raise ValueError("FastProjector takes a FastVolume (FastProjector.prepare)")
        if volume.requires_grad and torch.is_grad_enabled():  # rendered once, differentiated
            batched = _as_batched_volume(_checked_volume(volume))
            return FastVolume(batched.detach(), source=batched)
        return FastVolume(_constant_volume(volume))  # used at once: no copy

    def _ray_sums(
        self,
        volume: FastVolume,
        src: torch.Tensor,
        tgt: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        n_points: int,
        with_gradient: bool,
    ) -> torch.Tensor:
        if with_gradient:  # forward_and_jacobian: values and gradient sums, no autograd
            alphas = sample_alphas(lo.detach(), hi.detach(), n_points)
            return _march(volume, src.detach(), tgt.detach(), alphas, True)
        source = volume.source if volume.requires_grad else None
        return _RaySums.apply(src, tgt, lo, hi, n_points, volume, source)


class _RaySums(torch.autograd.Function):
    """Per-ray value sums (N*R,1,C), differentiable w.r.t. the voxel-space ray end points
    src (N,1,3) and tgt (N,R,3), the alpha range lo, hi (N,1) and, when given, the volume's
    ``source`` (B,C,X,Y,Z). A sample at ``src + alpha (tgt - src)`` moves by
    ``(1 - alpha) d_src + alpha d_tgt``, so the sums' gradients are ``g0 - g1`` and ``g1``;
    moving lo or hi slides the samples along the ray
    (:func:`~regbench.rendering.torch_projector.range_derivatives`, from the same sums). The sums
    are linear in the voxels: their gradient w.r.t. the volume scatters each ray's incoming
    gradient onto the eight corners of its samples with the trilinear weights (the adjoint,
    :func:`_scatter`)."""

    @staticmethod
    def forward(ctx, src, tgt, lo, hi, n_points, volume, source):
        alphas = sample_alphas(lo.detach(), hi.detach(), n_points)
        ctx.volume = volume
        ctx.pose_grad = any(ctx.needs_input_grad[:4])
        if ctx.needs_input_grad[6]:
            ctx.rays = (src.detach(), tgt.detach(), alphas)
        if not ctx.pose_grad:
            return _march(volume, src, tgt, alphas, False)
        out = _march(volume, src, tgt, alphas, True)  # (N*R, 7, C)
        ctx.save_for_backward(out[:, 1:], src, tgt, lo, hi)
        return out[:, :1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        d_src = d_tgt = d_lo = d_hi = d_source = None
        if ctx.needs_input_grad[6]:
            d_source = _adjoint(ctx.volume, *ctx.rays, grad_out[:, 0])
        if not ctx.pose_grad:
            return d_src, d_tgt, d_lo, d_hi, None, None, d_source
        grads, src, tgt, lo, hi = ctx.saved_tensors  # grads (N*R, 6, C): g0, then alpha-weighted
        n, r, _ = tgt.shape
        g0, g1 = grads[:, :3], grads[:, 3:]
        d_tgt = (g1 * grad_out).sum(-1).reshape(n, r, 3)
        d_src = ((g0 - g1) * grad_out).sum(-1).reshape(n, r, 3).sum(1, keepdim=True)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # (N,R,C,3) gradient sums against (N,R,1,3) ray directions, per pose's lo and hi.
            by_lo, by_hi = range_derivatives(
                g0.reshape(n, r, 3, -1).transpose(-1, -2),
                g1.reshape(n, r, 3, -1).transpose(-1, -2),
                (tgt - src).detach()[:, :, None],
                lo[:, :, None],
                hi[:, :, None],
            )
            weight = grad_out.reshape(n, r, -1)
            d_lo = (by_lo * weight).sum((1, 2))[:, None]
            d_hi = (by_hi * weight).sum((1, 2))[:, None]
        return d_src, d_tgt, d_lo, d_hi, None, None, d_source


def _checked_volume(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` itself, after checking that the kernels can render it."""
    if volume.device.type != "cpu":
        raise ValueError(f"FastProjector runs on the CPU, got a volume on {volume.device}")
    if volume.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"volume must be float32 or float64, got {volume.dtype}")
    return volume


def _constant_volume(volume: torch.Tensor) -> torch.Tensor:
    """The volume as (B,C,X,Y,Z), detached, for repeated rendering as a constant."""
    if volume.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "FastProjector.prepare keeps the volume as a constant, but it requires grad; render"
            " the tensor itself to differentiate w.r.t. it (or detach it)"
        )
    return _as_batched_volume(_checked_volume(volume).detach())


def _kernel_args(volume: FastVolume, src: torch.Tensor, tgt: torch.Tensor, alphas: torch.Tensor):
    """What the kernels take for rays src (N,1,3) -> tgt (N,R,3) sampled at alphas (N,P): the
    layout's axis, then (flat, layout, sizes, src, tgt, alphas, lo, step, bounds)."""
    dtype = volume.dtype
    if not all(torch.isfinite(t).all() for t in (src, tgt, tgt - src, alphas)):
        raise ValueError("non-finite ray end points or sample positions (is the pose finite?)")
    n = tgt.shape[0]
    p = alphas.shape[1]
    # The volume axis the rays run along most, to be the contiguous one.
    axis = int((tgt - src).abs().sum(dim=(0, 1)).argmax())
    flat, layout = volume.layout(axis)
    sizes = tuple(d + 2 * _PAD for d in volume.shape)
    # Padded voxel coordinates (the kernels index the padded volume).
    src_p = (src.reshape(n, 3).to(dtype) + _PAD).contiguous().numpy()
    tgt_p = (tgt.to(dtype) + _PAD).contiguous().numpy()
    alphas_np = alphas.to(dtype).expand(n, p).contiguous().numpy()
    a = alphas.to(torch.float64).expand(n, p)
    lo = a[:, 0].contiguous().numpy()
    step = ((a[:, -1] - a[:, 0]) / (p - 1)).contiguous().numpy()
    # The clamp of FeatureProjector's _integrate, in padded voxel coordinates.
    bounds = np.array([[0.5] * 3, [d + _PAD + 0.5 for d in volume.shape]], dtype=flat.dtype)
    use_torch_threads()
    return axis, (flat, layout, sizes, src_p, tgt_p, alphas_np, lo, step, bounds)


def use_torch_threads() -> None:
    """Run the next parallel kernel on torch's thread count (at most numba's): a job given one
    thread by the workflow then runs its kernels on one thread too."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _march(
    volume: FastVolume,
    src: torch.Tensor,
    tgt: torch.Tensor,
    alphas: torch.Tensor,
    with_gradient: bool,
) -> torch.Tensor:
    """Run a kernel: (N*R,1,C) value sums, or (N*R,7,C) with the gradient sums g0, g1."""
    _, args = _kernel_args(volume, src, tgt, alphas)
    n_rays = tgt.shape[0] * tgt.shape[1]
    out = np.zeros((n_rays, 7 if with_gradient else 1, volume.channels), dtype=args[0].dtype)
    kernel = _values_and_gradients if with_gradient else _values
    kernel(*args, out)
    return torch.from_numpy(out)


def _adjoint(
    volume: FastVolume,
    src: torch.Tensor,
    tgt: torch.Tensor,
    alphas: torch.Tensor,
    grad: torch.Tensor,
) -> torch.Tensor:
    """Gradient (B,C,X,Y,Z) of ``sum(grad * value sums)`` w.r.t. the volume, grad (N*R,C)."""
    axis, args = _kernel_args(volume, src, tgt, alphas)
    flat = args[0]
    out = np.zeros_like(flat)
    _scatter(out, *args[1:], grad.to(volume.dtype).contiguous().numpy())
    return volume.from_layout(out, axis)


# ---------------------------------------------------------------------- kernels
# Indices into the flat volume are unsigned: numba wraps negative signed indices around, and
# that check on each of the eight corner loads costs more than the rest of the sample.


@njit(cache=True)
def _axis_span(s: float, d: float, lower: float, upper: float) -> tuple[float, float]:
    """Alpha interval where ``s + alpha * d`` lies in [lower, upper] (float64)."""
    if d == 0.0:
        if lower <= s <= upper:
            return -np.inf, np.inf
        return np.inf, -np.inf
    a0 = (lower - s) / d
    a1 = (upper - s) / d
    return min(a0, a1), max(a0, a1)


@njit(cache=True)
def _sample_range(src, tgt, lo, step, p, sizes) -> tuple[int, int]:
    """First and last sample index (inclusive) of the ray src -> tgt (padded voxel coordinates)
    that can have a non-zero value or gradient: sample positions in ``[PAD - 1, size - PAD)``
    on every axis (elsewhere both voxel layers a sample blends along some axis are padding),
    widened by one sample against rounding (extra samples read zeros)."""
    if not step > 0.0:
        return 0, p - 1
    amin, amax = -np.inf, np.inf
    for axis in range(3):
        s = float(src[axis])
        lo_a, hi_a = _axis_span(s, float(tgt[axis]) - s, float(_PAD - 1), float(sizes[axis] - _PAD))
        amin = max(amin, lo_a)
        amax = min(amax, hi_a)
    if amin > amax:
        return 0, -1
    first = min(max((amin - lo) / step, -1.0), p + 1.0)
    last = min(max((amax - lo) / step, -1.0), p + 1.0)
    return max(0, int(np.ceil(first)) - 1), min(p - 1, int(np.floor(last)) + 1)


@njit(cache=True, fastmath=_FASTMATH)
def _clamp(q, lower, upper):
    """``q`` limited to [lower, upper]; NaN gives ``lower`` (min/max would propagate it)."""
    q = q if q > lower else lower
    return q if q < upper else upper


@njit(cache=True, fastmath=_FASTMATH)
def _corners(flat, strides, base, q0, q1, q2, bounds):
    """The sample at padded voxel coordinates q, clamped like FeatureProjector's: fractions
    (fx, fy, fz) and the eight corner values v[dx dy dz] of the cell, (dx, dy, dz) in {0,1}.
    The clamp also maps NaN to the lower bound, so no input can index outside the volume."""
    qx = _clamp(q0, bounds[0, 0], bounds[1, 0])
    qy = _clamp(q1, bounds[0, 1], bounds[1, 1])
    qz = _clamp(q2, bounds[0, 2], bounds[1, 2])
    cx, cy, cz = np.floor(qx), np.floor(qy), np.floor(qz)
    ox, oy, oz = strides
    o = base + np.uint64(int(cx)) * ox + np.uint64(int(cy)) * oy + np.uint64(int(cz)) * oz
    return (
        qx - cx,
        qy - cy,
        qz - cz,
        flat[o],
        flat[o + oz],
        flat[o + oy],
        flat[o + oy + oz],
        flat[o + ox],
        flat[o + ox + oz],
        flat[o + ox + oy],
        flat[o + ox + oy + oz],
    )


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _values(flat, layout, sizes, src, tgt, alphas, lo, step, bounds, out):
    """out[ray, 0, c] = sum over the ray's samples of the trilinear interpolant of channel c.

    flat: the padded channel-last volume(s), element strides ``layout`` = (x, y, z, volume),
    channel stride 1, padded spatial ``sizes``; src (N,3), tgt (N,R,3) padded voxel
    coordinates; alphas (N,P) sample parameters; lo, step (N,) float64 (for clipping); bounds
    (2,3) clamp; out (N*R,1,C) zeros. Arithmetic in the volume's dtype.
    """
    n, r = tgt.shape[0], tgt.shape[1]
    p, nc = alphas.shape[1], out.shape[2]
    strides = (np.uint64(layout[0]), np.uint64(layout[1]), np.uint64(layout[2]))
    per_volume = np.uint64(layout[3])
    for ray in prange(n * r):
        i = ray // r
        j = ray - i * r
        s0, s1, s2 = src[i, 0], src[i, 1], src[i, 2]
        d0, d1, d2 = tgt[i, j, 0] - s0, tgt[i, j, 1] - s1, tgt[i, j, 2] - s2
        k0, k1 = _sample_range(src[i], tgt[i, j], lo[i], step[i], p, sizes)
        for c in range(nc):
            base = np.uint64(i) * per_volume + np.uint64(c)
            acc = out[ray, 0, c]
            for k in range(k0, k1 + 1):
                a = alphas[i, np.uint64(k)]
                fx, fy, fz, v000, v001, v010, v011, v100, v101, v110, v111 = _corners(
                    flat, strides, base, s0 + a * d0, s1 + a * d1, s2 + a * d2, bounds
                )
                z00 = v000 + fz * (v001 - v000)  # lerp along z, then x, then y
                z01 = v010 + fz * (v011 - v010)
                z10 = v100 + fz * (v101 - v100)
                z11 = v110 + fz * (v111 - v110)
                x0 = z00 + fx * (z10 - z00)
                x1 = z01 + fx * (z11 - z01)
                acc += x0 + fy * (x1 - x0)
            out[ray, 0, c] = acc


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _values_and_gradients(flat, layout, sizes, src, tgt, alphas, lo, step, bounds, out):
    """As :func:`_values`, plus the sums of the interpolant's spatial gradient (x, y, z;
    one-sided at voxel planes, the upper cell's) in out[ray, 1:4, c], and the same weighted by
    alpha in out[ray, 4:7, c]. out (N*R,7,C) zeros."""
    n, r = tgt.shape[0], tgt.shape[1]
    p, nc = alphas.shape[1], out.shape[2]
    strides = (np.uint64(layout[0]), np.uint64(layout[1]), np.uint64(layout[2]))
    per_volume = np.uint64(layout[3])
    for ray in prange(n * r):
        i = ray // r
        j = ray - i * r
        s0, s1, s2 = src[i, 0], src[i, 1], src[i, 2]
        d0, d1, d2 = tgt[i, j, 0] - s0, tgt[i, j, 1] - s1, tgt[i, j, 2] - s2
        k0, k1 = _sample_range(src[i], tgt[i, j], lo[i], step[i], p, sizes)
        for c in range(nc):
            base = np.uint64(i) * per_volume + np.uint64(c)
            acc = out[ray, 0, c]
            gx0, gy0, gz0 = acc, acc, acc
            gx1, gy1, gz1 = acc, acc, acc
            for k in range(k0, k1 + 1):
                a = alphas[i, np.uint64(k)]
                fx, fy, fz, v000, v001, v010, v011, v100, v101, v110, v111 = _corners(
                    flat, strides, base, s0 + a * d0, s1 + a * d1, s2 + a * d2, bounds
                )
                dz00, dz01 = v001 - v000, v011 - v010
                dz10, dz11 = v101 - v100, v111 - v110
                z00, z01 = v000 + fz * dz00, v010 + fz * dz01
                z10, z11 = v100 + fz * dz10, v110 + fz * dz11
                dx0, dx1 = z10 - z00, z11 - z01
                x0, x1 = z00 + fx * dx0, z01 + fx * dx1
                dzx0, dzx1 = dz00 + fx * (dz10 - dz00), dz01 + fx * (dz11 - dz01)
                gy = x1 - x0
                gx = dx0 + fy * (dx1 - dx0)
                gz = dzx0 + fy * (dzx1 - dzx0)
                acc += x0 + fy * gy
                gx0 += gx
                gy0 += gy
                gz0 += gz
                gx1 += a * gx
                gy1 += a * gy
                gz1 += a * gz
            out[ray, 0, c] = acc
            out[ray, 1, c] = gx0
            out[ray, 2, c] = gy0
            out[ray, 3, c] = gz0
            out[ray, 4, c] = gx1
            out[ray, 5, c] = gy1
            out[ray, 6, c] = gz1


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _scatter(out, layout, sizes, src, tgt, alphas, lo, step, bounds, grad):
    """The adjoint of :func:`_values`: out[corner] += grad[ray, c] * its trilinear weight, for
    the eight corners of every sample of every ray; out is laid out like the volume (zeros).
    Parallel over channels (each writes only its own elements; rays of one channel in
    order), so no two threads add to one element."""
    n, r = tgt.shape[0], tgt.shape[1]
    p, nc = alphas.shape[1], grad.shape[1]
    ox, oy, oz = np.uint64(layout[0]), np.uint64(layout[1]), np.uint64(layout[2])
    per_volume = np.uint64(layout[3])
    for c in prange(nc):
        for ray in range(n * r):
            g = grad[ray, c]
            if g == 0:
                continue
            i = ray // r
            j = ray - i * r
            s0, s1, s2 = src[i, 0], src[i, 1], src[i, 2]
            d0, d1, d2 = tgt[i, j, 0] - s0, tgt[i, j, 1] - s1, tgt[i, j, 2] - s2
            k0, k1 = _sample_range(src[i], tgt[i, j], lo[i], step[i], p, sizes)
            base = np.uint64(i) * per_volume + np.uint64(c)
            for k in range(k0, k1 + 1):
                a = alphas[i, np.uint64(k)]
                qx = _clamp(s0 + a * d0, bounds[0, 0], bounds[1, 0])
                qy = _clamp(s1 + a * d1, bounds[0, 1], bounds[1, 1])
                qz = _clamp(s2 + a * d2, bounds[0, 2], bounds[1, 2])
                cx, cy, cz = np.floor(qx), np.floor(qy), np.floor(qz)
                fx, fy, fz = qx - cx, qy - cy, qz - cz
                o = base + np.uint64(int(cx)) * ox + np.uint64(int(cy)) * oy
                o = o + np.uint64(int(cz)) * oz
                gx0, gx1 = g * (1 - fx), g * fx
                w00, w01, w10, w11 = gx0 * (1 - fy), gx0 * fy, gx1 * (1 - fy), gx1 * fy
                out[o] += w00 * (1 - fz)
                out[o + oz] += w00 * fz
                out[o + oy] += w01 * (1 - fz)
                out[o + oy + oz] += w01 * fz
                out[o + ox] += w10 * (1 - fz)
                out[o + ox + oz] += w10 * fz
                out[o + ox + oy] += w11 * (1 - fz)
                out[o + ox + oy + oz] += w11 * fz
