"""CDReg's similarity network (Chen et al., ISBI 2024): dual-branch feature decomposition and
a learned distance.

As the authors' ``CD_net``: the DRR branch projects a 3D CNN's feature volume (the density
plus learned channels, :class:`regbench.models.volume.PlainVolumeNet`) along the rays; a
shared shallow encoder maps the X-ray (repeated over the channels) and the DRR features to
feature maps; per modality, a low-frequency branch (a Fourier unit: global mixing in the
frequency domain, as their FFC ResNet block) and a high-frequency branch (an invertible
network of affine coupling layers, their INN) decompose them; the squared differences of the
two modalities' low and high features go through two small heads whose gated outputs are
distance estimates, each regressed in training to a convex function of the pose distance
(:mod:`regbench.train.cdreg`).

Deviations: the shallow features are split explicitly (:func:`frequency_split`: a box
low-pass and its remainder) before the two branches, where the paper separates them by the
branches and the decomposition loss alone; a small convolutional shallow encoder replaces
their Global-Poolformer; the heads see the squared differences average-pooled to
``head_cells``^2 cells (the authors' MLP takes all 16384 values) and end in softplus, so the
distance is non-negative and ``sqrt(distance)`` is a residual; no bone contrast is estimated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regbench.models.inputs import standardize
from regbench.models.similarity import EmbeddingSimilarity
from regbench.models.variants import Variant
from regbench.models.volume import build_volume_net


def low_pass(x: torch.Tensor, kernel_px: int) -> torch.Tensor:
    """A ``kernel_px`` box filter applied twice (a tent), with replicated borders, so a
    constant image stays that constant."""
    pad = kernel_px // 2
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel_px, stride=1)
    return x


def frequency_split(x: torch.Tensor, kernel_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,C,H,W) -> (low, high) with ``low + high == x``: the low-pass and its remainder."""
    low = low_pass(x, kernel_px)
    return low, x - low


class FourierUnit(torch.nn.Module):
    """Global mixing: a pointwise convolution of the real and imaginary parts of the 2D
    spectrum, added back to the input (FFC's spectral transform)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(x, norm="ortho")
        parts = torch.cat([spectrum.real, spectrum.imag], dim=1)
        real, imag = F.silu(self.mix(parts)).chunk(2, dim=1)
        mixed = torch.fft.irfft2(torch.complex(real, imag), s=x.shape[-2:], norm="ortho")
        return self.out(x + mixed)


class _Bottleneck(torch.nn.Module):
    """Inverted residual (1x1 expand, 3x3 depthwise, 1x1 project): the coupling functions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = 2 * channels
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, hidden, 1),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="reflect", groups=hidden),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CouplingLayer(torch.nn.Module):
    """One invertible affine coupling (CDDFuse's detail node): mix the halves (1x1), then
    ``z2 += phi(z1)``, ``z1 = z1 exp(rho(z2)) + eta(z2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.shuffle = torch.nn.Conv2d(channels, channels, 1)
        self.phi, self.rho, self.eta = (_Bottleneck(half) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.shuffle(x).chunk(2, dim=1)
        z2 = z2 + self.phi(z1)
        z1 = z1 * torch.exp(self.rho(z2)) + self.eta(z2)
        return torch.cat([z1, z2], dim=1)


class DualBranchEncoder(torch.nn.Module):
    """Shared shallow features, split into low and high frequencies, each through its branch
    (one pair of branches per modality, as the authors')."""

    def __init__(self, in_channels: int, width: int, low_pass_px: int, inn_layers: int) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"width must be even (the coupling layers split it), got {width}")
        self.low_pass_px = int(low_pass_px)
        self.shallow = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
        )
        self.low = torch.nn.ModuleDict({m: FourierUnit(width) for m in ("xray", "drr")})
        self.high = torch.nn.ModuleDict(
            {
                m: torch.nn.Sequential(*(CouplingLayer(width) for _ in range(inn_layers)))
                for m in ("xray", "drr")
            }
        )

    def forward(self, images: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,C,H,W) standardised images -> (low, high) feature maps (N,width,H/4,W/4)."""
        low, high = frequency_split(self.shallow(images), self.low_pass_px)
        return self.low[modality](low), self.high[modality](high)


class DistanceHead(torch.nn.Module):
    """Squared feature differences -> one non-negative distance estimate per pair: an MLP on
    their pooled cells, gated by a sigmoid (as the authors' ``MLP``: value times gate)."""

    def __init__(self, channels: int, cells: int, hidden: int) -> None:
        super().__init__()
        self.cells = int(cells)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(channels * cells * cells, hidden), torch.nn.SiLU()
        )
        self.value = torch.nn.Linear(hidden, 1)
        self.gate = torch.nn.Linear(hidden, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = F.adaptive_avg_pool2d((a - b) ** 2, self.cells).flatten(1)
        h = self.body(sq)
        return (F.softplus(self.value(h)) * torch.sigmoid(self.gate(h)))[:, 0]


class CdregModel(EmbeddingSimilarity):
    """CDReg's network. An embedding is ``[low.flatten, high.flatten]`` of one image; the
    distance is the mean of the two heads' estimates, the residual its square root."""

    def __init__(
        self,
        variant: Variant,
        channels: int,
        width: int,
        low_pass_px: int,
        inn_layers: int,
        head_cells: int,
        head_hidden: int,
        bone_attenuation: float,
        matched_init: bool = True,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.volume_net = build_volume_net(variant.volume, channels)
        self.channels = self.volume_net.channels
        self.encoder = DualBranchEncoder(self.channels, width, low_pass_px, inn_layers)
        self.low_head = DistanceHead(width, head_cells, head_hidden)
        self.high_head = DistanceHead(width, head_cells, head_hidden)
        self.width = int(width)
        self.register_buffer("bone_attenuation", torch.tensor(float(bone_attenuation)))
        if matched_init:
            self.match_initialisation()

    @torch.no_grad()
    def match_initialisation(self) -> None:
        """Start the untrained network as a distance of like with like, so that its pose gradient
        points home near the truth from the first step (independent random branches and heads
        give one unrelated to it): the shallow encoder reads the density channel only (its
        weights on the learned channels start at zero; the X-ray is repeated over the
        channels), each DRR branch starts as a copy of the X-ray's, and each head starts
        increasing in every squared feature difference (non-negative weights, a constant gate).
        Training is free to move every weight from there."""
        self.encoder.shallow[0].weight[:, 1:] = 0
        for branches in (self.encoder.low, self.encoder.high):
            branches["drr"].load_state_dict(branches["xray"].state_dict())
        for head in (self.low_head, self.high_head):
            for layer in (head.body[0], head.value):
                layer.weight.abs_()
                layer.bias.zero_()
            head.gate.weight.zero_()
            head.gate.bias.zero_()

    def _embed(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        low, high = self.encoder(standardize(images).float(), modality)
        self._map_size = tuple(low.shape[-2:])
        return torch.cat([low.flatten(1), high.flatten(1)], dim=-1)

    def embed_xray(
        self, images: torch.Tensor, gamma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma`` is not used: this model has no imaging model."""
        bone = self.bone_attenuation.double().expand(len(images))
        return self._embed(images.expand(-1, self.channels, -1, -1), "xray"), bone

    def embed_drr_images(self, drr: torch.Tensor) -> torch.Tensor:
        return self._embed(drr, "drr")

    def split(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An embedding (N,D) -> its (low, high) feature maps (N,width,h,w)."""
        low, high = e.chunk(2, dim=-1)
        shape = (len(e), self.width, *self._map_size)
        return low.reshape(shape), high.reshape(shape)

    def branch_distances(
        self, e_x: torch.Tensor, e_d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The low and high heads' distance estimates (N,), (N,)."""
        (low_x, high_x), (low_d, high_d) = self.split(e_x), self.split(e_d)
        return self.low_head(low_x, low_d), self.high_head(high_x, high_d)

    def distance(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        low, high = self.branch_distances(e_x, e_d)
        return (0.5 * (low + high)).double()

    def residual(self, e_x: torch.Tensor, e_d: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.distance(e_x, e_d) + 1e-12)[:, None]
