"""Volume branch of the learned similarity: CT density -> C-channel feature volume.

Every network here maps a density volume to ``channels`` non-negative channels on the same voxel
grid: channel 0 is the input density itself (so a projection always contains the plain DRR),
channels 1.. are learned features passed through softplus (line integrals of non-negative
features stay DRR-like: positive, growing with the amount of matter crossed). The result is
meant for :class:`regbench.rendering.torch_projector.FeatureProjector`.

Shapes: a volume is ``(X,Y,Z)`` (returns ``(channels,X,Y,Z)``) or ``(B,1,X,Y,Z)`` (returns
``(B,channels,X,Y,Z)``), indexed like ``drr.density``. Kernel sizes are in voxels: the
equivariant network is equivariant to rotations of the voxel lattice, i.e. physically
equivariant when the voxel steps are equal along the three axes (regbench resamples CTs to an
isotropic spacing).

* ``e3nn`` (:class:`EquivariantVolumeNet`): SE(3)-equivariant voxel convolutions
  (``e3nn.nn.models.v2104.voxel_convolution.Convolution``) with gated nonlinearities; hidden
  features carry scalars, vectors and rank-2 tensors, the outputs are scalars (0e), so rotating
  the CT rotates the feature volume with it. The paper's volume branch.
* ``cnn3d`` (:class:`PlainVolumeNet`): a Conv3d residual network of similar size and the same
  receptive field (ablation ``abl-cnn3d``; ProST's volume features).
* ``identity`` (:class:`IdentityVolume`): the density alone, one channel (``abl-no-ecnn``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.math import normalize2mom
from e3nn.nn.models.v2104.voxel_convolution import Convolution

VolumeKind = Literal["e3nn", "cnn3d", "identity"]


class _VolumeNet(torch.nn.Module):
    """Shared input/output handling: batch the input, append softplus features to the density."""

    channels: int

    def forward(self, density: torch.Tensor) -> torch.Tensor:
        x, unbatched = _batched(density)
        out = torch.cat([x, F.softplus(self.features(x))], dim=1)
        return out[0] if unbatched else out

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class EquivariantVolumeNet(_VolumeNet):
    """e3nn voxel CNN: 1x0e -> (gated hidden irreps) x (layers - 1) -> out_channels x 0e.

    The first convolution has a ``first_kernel``-voxel diameter, the others ``kernel``; the
    receptive field is ``first_kernel + (layers - 1) * (kernel - 1)`` voxels. Scalars go through
    SiLU, each non-scalar irrep is multiplied by a sigmoid gate scalar (e3nn's ``Gate``, written
    channel-first here so no voxel-sized transposes are needed).
    """

    def __init__(
        self,
        out_channels: int = 8,
        hidden: str = "8x0e + 4x1o + 2x2e",
        layers: int = 2,
        first_kernel: int = 5,
        kernel: int = 3,
        lmax: int = 2,
        num_radial_basis: int = 3,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("layers must be at least 1")
        self.channels = out_channels + 1
        hidden_irreps = o3.Irreps(hidden).sort().irreps.simplify()
        sh = o3.Irreps.spherical_harmonics(lmax)

        self.gates = torch.nn.ModuleList()
        self.convs = torch.nn.ModuleList()
        irreps_in = o3.Irreps("1x0e")
        for i in range(layers):
            last = i == layers - 1
            diameter = first_kernel if i == 0 else kernel
            if last:
                irreps_out = o3.Irreps(f"{out_channels}x0e")
            else:
                gate = _ChannelGate(hidden_irreps)
                self.gates.append(gate)
                irreps_out = gate.irreps_in
            self.convs.append(_VoxelConv(irreps_in, irreps_out, sh, diameter, num_radial_basis))
            irreps_in = hidden_irreps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv, gate in zip(self.convs, self.gates, strict=False):
            x = gate(conv(x))
        return self.convs[-1](x)


class _VoxelConv(torch.nn.Module):
    """e3nn's voxel ``Convolution`` evaluated in fewer, larger operations (same function).

    * e3nn adds a pointwise equivariant ``Linear`` (on a transposed copy of the volume) to the
      convolution; a pointwise map is a kernel non-zero at the centre only, so it is folded into
      the kernel and one ``conv3d`` does both.
    * With a one-channel input (the CT), every kernel lies in the span of fixed filters
      ``radial_b(|p|) * Y_lm(p)``. The input is filtered once by those (no weight gradient
      needed) and a learned pointwise mix, ``kernel = mix @ filters``, gives the outputs: the
      weight gradient of a 1 -> 36 channel 5^3 convolution is the slowest part of the network
      on CPU, and this avoids it.
    """

    def __init__(
        self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh: o3.Irreps, diameter: int, radial: int
    ) -> None:
        super().__init__()
        if diameter < 3 or diameter % 2 == 0:
            raise ValueError(f"kernel diameter must be odd and >= 3 voxels, got {diameter}")
        # Lattice points within diameter / 2 of the centre along each axis, unit voxel steps.
        self.conv = Convolution(irreps_in, irreps_out, sh, diameter, radial, steps=(1.0, 1.0, 1.0))
        self.padding = diameter // 2
        self.register_buffer("eye", torch.eye(self.conv.irreps_in.dim), persistent=False)
        self.factorized = self.conv.irreps_in.dim == 1
        if self.factorized:
            filters = (self.conv.emb[..., :, None] * self.conv.sh[..., None, :]).flatten(-2)
            filters = filters.reshape(-1, filters.shape[-1]).T.double()  # (n_filters, lattice)
            filters = filters[filters.norm(dim=1) > 1e-9]
            self.register_buffer("filters", filters.float(), persistent=False)
            self.register_buffer("to_mix", torch.linalg.pinv(filters).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.conv.kernel()  # (out, in, kx, ky, kz)
        pointwise = self.conv.sc(self.eye).T  # (out, in)
        if self.factorized:
            mix = torch.cat([kernel.flatten(1) @ self.to_mix, pointwise], dim=1)  # (out, n+1)
            filters = self.filters.reshape(-1, 1, *kernel.shape[2:])
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                responses = F.conv3d(x, filters, padding=self.padding)
            responses = torch.cat([responses, x], dim=1).flatten(2)  # (B, n+1, voxels)
            return (mix @ responses).reshape(len(x), -1, *x.shape[2:])
        c = self.padding
        kernel = kernel + F.pad(pointwise[..., None, None, None], (c, c, c, c, c, c))
        return F.conv3d(x, kernel, padding=self.padding)


class _ChannelGate(torch.nn.Module):
    """e3nn's gated nonlinearity on channel-first tensors (B, irreps, X, Y, Z).

    Input: ``hidden``'s scalars, then one gate scalar per non-scalar irrep, then the non-scalar
    irreps (``irreps_in``); output: ``hidden``. Activations are normalised to unit second moment
    like e3nn's ``Gate``.
    """

    def __init__(self, hidden: o3.Irreps) -> None:
        super().__init__()
        scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
        self.n_scalars, self.n_gates = scalars.dim, gated.num_irreps
        self.irreps_in = scalars + o3.Irreps(f"{self.n_gates}x0e") + gated
        self.irreps_out = hidden
        self.act = normalize2mom(F.silu)
        self.gate_act = normalize2mom(torch.sigmoid)
        self.blocks = [(m, ir.dim) for m, ir in gated]  # (multiplicity, irrep dim) per block
        self.sizes = [m * d for m, d in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars, gates, *blocks = x.split([self.n_scalars, self.n_gates, *self.sizes], dim=1)
        gates = self.gate_act(gates).split([m for m, _ in self.blocks], dim=1)
        out = [self.act(scalars)]
        for block, gate, (m, d) in zip(blocks, gates, self.blocks, strict=True):
            # the d components of each irrep share its gate
            out.append((block.unflatten(1, (m, d)) * gate[:, :, None]).flatten(1, 2))
        return torch.cat(out, dim=1)


class PlainVolumeNet(_VolumeNet):
    """Conv3d residual network: stem (``first_kernel``), ``layers - 1`` residual blocks
    (``kernel``), 1x1x1 head. Same receptive field as :class:`EquivariantVolumeNet` with the
    same arguments; not rotation-equivariant."""

    def __init__(
        self,
        out_channels: int = 8,
        width: int = 16,
        layers: int = 2,
        first_kernel: int = 5,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("layers must be at least 1")
        self.channels = out_channels + 1
        self.stem = torch.nn.Conv3d(1, width, first_kernel, padding=first_kernel // 2)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Conv3d(width, width, kernel, padding=kernel // 2) for _ in range(layers - 1)
        )
        self.head = torch.nn.Conv3d(width, out_channels, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.stem(x))
        for block in self.blocks:
            x = x + F.silu(block(x))
        return self.head(x)


class IdentityVolume(torch.nn.Module):
    """The density as a one-channel feature volume (no learned volume features)."""

    channels = 1

    def forward(self, density: torch.Tensor) -> torch.Tensor:
        x, unbatched = _batched(density)
        return x[0] if unbatched else x


def build_volume_net(kind: VolumeKind, out_channels: int = 8, **kwargs: object) -> torch.nn.Module:
    """The volume branch by name. ``out_channels`` learned channels (ignored by ``identity``);
    the module's ``channels`` attribute is the total, density included."""
    if kind == "e3nn":
        return EquivariantVolumeNet(out_channels, **kwargs)
    if kind == "cnn3d":
        return PlainVolumeNet(out_channels, **kwargs)
    if kind == "identity":
        return IdentityVolume()
    raise ValueError(f"volume network kind must be 'e3nn', 'cnn3d' or 'identity', not {kind!r}")


def _batched(density: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if density.dim() == 3:
        return density[None, None], True
    if density.dim() == 5 and density.shape[1] == 1:
        return density, False
    raise ValueError(f"density must be (X,Y,Z) or (B,1,X,Y,Z), got {tuple(density.shape)}")
