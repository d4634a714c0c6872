"""PSSS-reg's network (Zhang et al., MICCAI 2023): an encoder shared by a reconstruction decoder
and a self-attention pose head.

The paper regresses the six pose parameters from the X-ray with a *regularised autoencoder*:
the encoder's code must also let a decoder rebuild the input, so that the features keep the
patient's anatomy instead of shortcuts of the training poses, and a *multi-head self-attention*
module weighs the code's regions before the regression. The authors' network code is not
public (their repository holds the renderer, the losses and a refinement demo), so the layer
sizes here are ours: ``depth`` stride-2 stages widening from ``base_channels``, a code of
``grid x grid`` tokens (adaptive average pooling, so any detector size fits) with learned
position embeddings, one multi-head attention block with a residual and layer norm, and a
linear map of the flattened tokens to the six outputs. The outputs are normalised C-arm
parameters like the regressor's (:class:`~regbench.models.regressor.PoseRegressor`): angles and
offsets minus the clinical prior's mean, over its spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.models.inputs import standardize
from regbench.models.unet import conv_block


@dataclass(frozen=True)
class NetShape:
    """What the architecture is made of (a checkpoint's record of it)."""

    base_channels: int
    depth: int
    grid: int
    heads: int

    @property
    def code_channels(self) -> int:
        return self.base_channels * 2 ** (self.depth - 1)


class Encoder(nn.Module):
    """(N,1,H,W) -> (N,C,H/2^depth,W/2^depth) code (sides rounded up)."""

    def __init__(self, shape: NetShape):
        super().__init__()
        widths = [shape.base_channels * 2**i for i in range(shape.depth)]
        stages = [conv_block(1, widths[0], 2)]
        stages += [conv_block(widths[i], widths[i + 1], 2) for i in range(shape.depth - 1)]
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class Decoder(nn.Module):
    """Code -> (N,1,H,W) reconstruction of the standardised input (the autoencoder's
    regulariser); the last upsampling resizes to the input's exact size."""

    def __init__(self, shape: NetShape):
        super().__init__()
        widths = [shape.base_channels * 2**i for i in range(shape.depth)]
        self.ups = nn.ModuleList(
            [conv_block(widths[i + 1], widths[i], 1) for i in reversed(range(shape.depth - 1))]
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, code: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = code
        for up in self.ups:
            x = up(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)


class AttentionHead(nn.Module):
    """Code -> (N,6): ``grid x grid`` tokens, multi-head self-attention, linear regression."""

    def __init__(self, shape: NetShape):
        super().__init__()
        channels, tokens = shape.code_channels, shape.grid**2
        self.grid = shape.grid
        self.position = nn.Parameter(torch.zeros(1, tokens, channels))
        nn.init.normal_(self.position, std=0.02)
        self.attention = nn.MultiheadAttention(channels, shape.heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)
        self.regress = nn.Linear(tokens * channels, 6)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(code, self.grid)
        tokens = pooled.flatten(2).transpose(1, 2) + self.position  # (N,T,C)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm(tokens + attended)
        return self.regress(tokens.flatten(1))


@dataclass(frozen=True)
class PSSSOutput:
    params: torch.Tensor  # (N,6) normalised C-arm parameters
    reconstruction: torch.Tensor  # (N,1,H,W) the decoder's image
    target: torch.Tensor  # (N,1,H,W) what it reconstructs: the standardised input


class PSSSNet(nn.Module):
    """Standardised X-ray -> normalised pose parameters and the input's reconstruction."""

    def __init__(self, shape: NetShape, prior: PosePrior, geometry: dict | None = None):
        super().__init__()
        if shape.code_channels % shape.heads:
            raise ValueError(
                f"{shape.code_channels} code channels do not split into {shape.heads} heads"
            )
        self.shape = shape
        self.geometry = dict(geometry or {})
        self.encoder = Encoder(shape)
        self.decoder = Decoder(shape)
        self.head = AttentionHead(shape)
        rot_mean, trans_mean = prior.mean_params()
        rot_std, trans_std = prior.std_params()
        self.register_buffer("mean", torch.cat([rot_mean, trans_mean]).float())
        self.register_buffer("scale", torch.cat([rot_std, trans_std]).clamp_min(1e-6).float())

    def forward(self, images: torch.Tensor) -> PSSSOutput:
        x = standardize(images)
        code = self.encoder(x)
        return PSSSOutput(self.head(code), self.decoder(code, x.shape[-2:]), x)

    def normalise(self, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """(N,3) angles (rad), (N,3) offsets (mm) -> (N,6) training targets."""
        return (torch.cat([rotation, translation], dim=-1).float() - self.mean) / self.scale

    def to_pose(self, z: torch.Tensor) -> torch.Tensor:
        """(N,6) normalised parameters -> (N,4,4) float64 poses."""
        params = z.double() * self.scale.double() + self.mean.double()
        return carm_pose(params[:, :3], params[:, 3:])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.to_pose(self(images).params)
