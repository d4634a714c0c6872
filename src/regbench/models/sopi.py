"""SOPI's similarity network (Chen et al., ICASSP 2024): two composite encoders and their
multi-level feature MSE.

The composite encoder (a CBNet-style composite backbone of "CF blocks", as in the authors'
``Composite_encoder``): a stride-4 stem, a split-attention block, then backbone 1 (three CF
blocks) and backbone 2 (two CF blocks) fed by backbone 1's deeper levels through composite
connection units. A CF block runs split-attention bottlenecks at three scales, a Focal-NeXt
block at the coarsest, and a top-down transition that adds the levels back up
("sequentially add"); the last block's three outputs are the encoder's levels. One encoder
takes the X-ray, the other the DRR; the distance is the sum over levels of the mean squared
feature difference, i.e. a squared Euclidean latent distance of the concatenated levels each
scaled by ``1/sqrt(size)``.

Deviations from the authors' network (sizes are the config's ``sopi.training.width``):
channel-wise LayerNorm replaces their BatchNorm (batches of four, twice-differentiated
training) and SiLU their ReLU (smooth second derivatives for gradient matching); no CT mask
weights the features; the X-ray encoder estimates no bone contrast (the DRR is composed with
``render.bone_attenuation``, as the intensity baselines').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regbench.models.inputs import standardize
from regbench.models.latent import EuclideanLatent
from regbench.models.regressor import PoseRegressor
from regbench.models.similarity import EmbeddingSimilarity
from regbench.models.variants import Variant
from regbench.models.volume import build_volume_net


class ChannelNorm(torch.nn.Module):
    """LayerNorm over the channels of each pixel (the authors' ``LayerNorm`` of their stem)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class SplitAttention(torch.nn.Module):
    """ResNeSt's split attention (radix 2): two grouped 3x3 convolutions, mixed per channel by
    softmax weights from their pooled sum."""

    def __init__(self, channels: int, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        self.conv = torch.nn.Conv2d(channels, channels * radix, 3, padding=1, groups=radix)
        hidden = max(channels // 2, 4)
        self.fc1 = torch.nn.Conv2d(channels, hidden, 1)
        self.fc2 = torch.nn.Conv2d(hidden, channels * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = F.silu(self.conv(x)).unflatten(1, (self.radix, -1))  # (N,r,C,H,W)
        pooled = splits.sum(1).mean(dim=(-2, -1), keepdim=True)
        weights = self.fc2(F.silu(self.fc1(pooled))).unflatten(1, (self.radix, -1)).softmax(1)
        return (weights * splits).sum(1)


class SplitBottleneck(torch.nn.Module):
    """1x1 -> split attention -> 1x1, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = torch.nn.Conv2d(channels, channels, 1)
        self.attend = SplitAttention(channels)
        self.expand = torch.nn.Conv2d(channels, channels, 1)
        self.norm = ChannelNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.attend(F.silu(self.reduce(x))))
        return F.silu(x + self.norm(y))


class FocalBlock(torch.nn.Module):
    """Focal NeXt: a 7x7 depthwise convolution, a dilated one, and a 4x pointwise MLP, each
    added back (a large receptive field at the coarsest level)."""

    def __init__(self, channels: int, dilation: int = 2) -> None:
        super().__init__()
        self.local = torch.nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm1 = ChannelNorm(channels)
        self.dilated = torch.nn.Conv2d(
            channels, channels, 7, padding=3 * dilation, dilation=dilation, groups=channels
        )
        self.norm2 = ChannelNorm(channels)
        self.mlp_in = torch.nn.Conv2d(channels, 4 * channels, 1)
        self.mlp_out = torch.nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + F.gelu(self.norm1(self.local(x)))
        z = y + F.gelu(self.norm2(self.dilated(y)))
        return x + self.mlp_out(F.gelu(self.mlp_in(z)))


class CFBlock(torch.nn.Module):
    """Three scales (``c``, ``2c``, ``4c`` channels; full, 1/2, 1/4 resolution) and a top-down
    transition; returns ``(p3, p4, p5)``: ``c`` channels at full resolution (twice) and ``2c``
    at half."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.block3 = SplitBottleneck(c)
        self.down3 = torch.nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.block4 = SplitBottleneck(2 * c)
        self.down4 = torch.nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)
        self.focal = FocalBlock(4 * c)
        self.lateral5 = torch.nn.Conv2d(4 * c, 2 * c, 1)
        self.lateral4 = torch.nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.block3(x)
        c4 = self.block4(self.down3(c3))
        c5 = self.focal(self.down4(c4))
        p5 = _upsample_to(self.lateral5(c5), c4)
        p4 = _upsample_to(self.lateral4(p5 + c4), c3)
        return p4 + c3, p4, p5


class CompositeEncoder(torch.nn.Module):
    """(N,1,H,W) image -> three feature levels ((N,w,H/8,W/8) twice, (N,2w,H/16,W/16))."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        mid = max(width // 4, 2)
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(1, mid, 3, stride=2, padding=1),
            ChannelNorm(mid),
            torch.nn.GELU(),
            torch.nn.Conv2d(mid, width // 2, 3, stride=2, padding=1),
            ChannelNorm(width // 2),
            torch.nn.GELU(),
        )
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(width // 2, width, 3, padding=1),
            torch.nn.SiLU(),
            SplitBottleneck(width),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
        self.backbone1 = torch.nn.ModuleList(CFBlock(width) for _ in range(3))
        self.backbone2 = torch.nn.ModuleList(CFBlock(width) for _ in range(2))
        # composite connection units: backbone 1's deeper levels into backbone 2
        self.connect3 = torch.nn.Sequential(torch.nn.Conv2d(width, width, 1), ChannelNorm(width))
        self.connect4 = torch.nn.Sequential(torch.nn.Conv2d(width, width, 1), ChannelNorm(width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.block(self.stem(x))
        levels = []
        for cf in self.backbone1:
            x = cf(x)[0]
            levels.append(x)
        b1l2, b1l3, b1l4 = levels
        y = self.backbone2[0](b1l2 + self.connect3(b1l3))[0]
        return self.backbone2[1](y + self.connect4(b1l4))


class SopiModel(EmbeddingSimilarity):
    """Two composite encoders (X-ray, DRR), their multi-level feature MSE as a squared
    Euclidean latent distance, and SOPI's own initialiser (a pose regressor on the X-ray)."""

    def __init__(
        self, variant: Variant, width: int, bone_attenuation: float, initialiser: PoseRegressor
    ) -> None:
        super().__init__()
        self.variant = variant
        self.volume_net = build_volume_net(variant.volume)
        self.encoder_xray = CompositeEncoder(width)
        self.encoder_drr = CompositeEncoder(width)
        self.latent = EuclideanLatent()
        self.initialiser = initialiser
        self.register_buffer("bone_attenuation", torch.tensor(float(bone_attenuation)))

    def train(self, mode: bool = True) -> SopiModel:
        """The encoders in ``mode``; the initialiser always in eval mode: it is fine-tuned with
        its batch-norm statistics frozen (batches of four)."""
        super().train(mode)
        self.initialiser.eval()
        return self

    @staticmethod
    def _embed(encoder: CompositeEncoder, image: torch.Tensor) -> torch.Tensor:
        levels = encoder(standardize(image).float())
        return torch.cat([f.flatten(1) / f[0].numel() ** 0.5 for f in levels], dim=-1).double()

    def embed_xray(
        self, images: torch.Tensor, gamma: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma`` is not used: this model has no imaging model."""
        bone = self.bone_attenuation.double().expand(len(images))
        return self._embed(self.encoder_xray, images), bone

    def embed_drr_images(self, drr: torch.Tensor) -> torch.Tensor:
        return self._embed(self.encoder_drr, drr[:, :1])


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
