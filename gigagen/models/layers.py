"""Building blocks shared by the autoencoder and the UNet."""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn
import torch.nn.functional as F


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each pixel (ConvNeXt's LayerNorm2d), with weight and bias.

    Unlike GroupNorm it uses no statistics across space, so a network built from it gives the same
    output for a pixel whether it sees the whole image or a tile with enough margin: tiled decode
    equals untiled decode. F.layer_norm on a channels-last view is one fused kernel on CPU (4x faster
    than an RMS norm written from elementwise ops at full resolution).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, self.eps).permute(0, 3, 1, 2)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose result for a sample does not depend on the batch it is in. PyTorch's channels-last
    CPU kernel reduces in another order for a batch of one than for larger ones (measured: up to 0.004 apart
    on bf16 input), which made a tile's result depend on whether it was denoised alone; at inference a lone
    sample is normalised as a batch of two (itself twice), costing one more norm rather than the layout
    conversions the NCHW kernel would need (+65% per UNet call). Same state dict as nn.GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and not self.training:
            return super().forward(torch.cat([x, x]))[:1]
        return super().forward(x)


Layer = TypeVar("Layer", nn.Conv2d, nn.Linear)


def zero_init(layer: Layer) -> Layer:
    """`layer` with weight and bias set to zero: a residual branch ending in it adds nothing at first, so a
    trained network grown by that branch starts out computing exactly what it did."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm(min(32, channels // 4) or 1, channels)


def rowwise_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) computed one distinct row at a time, so a row's result never depends on the batch.

    A batched GEMM picks its kernel (and summation order) by batch size; at inference that would make
    pixels depend on the tile batch size. Convolutions and norms here are already per-sample exact.
    """
    if layer.training or x.shape[0] == 1:
        return layer(x)
    uniq, inverse = torch.unique(x, dim=0, return_inverse=True)
    rows = torch.cat([layer(uniq[i : i + 1]) for i in range(uniq.shape[0])])
    return rows[inverse]


class ResBlock(nn.Module):
    """Pre-norm residual block; optional additive embedding (time/level) after the first conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0, spatial_norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        norm = group_norm if spatial_norm else PixelNorm
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2 = norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + rowwise_linear(self.emb, F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention (used only at the lowest UNet resolution)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        # written out rather than F.scaled_dot_product_attention, whose fused CPU kernel splits the work
        # differently for a batch of one (measured: 0.002 apart), so a tile's result would depend on the batch
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (c ** -0.5), dim=-1)
        a = torch.bmm(weights.to(v.dtype), v)  # (b, hw, c)
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) float timesteps -> (B, dim) (DDPM, Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)
