"""Autoencoder for one tile of H&E pixels: (B, 3, H, W) in [-1, 1] <-> (B, latent_ch, H/f, W/f).

Deterministic (a small latent L2 penalty in training keeps its scale bounded). It uses PixelNorm,
never GroupNorm, so decoding a latent canvas tile by tile with a margin reproduces the untiled decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from gigagen.models.layers import PixelNorm, ResBlock, zero_init

BASE_DECODE_HALO = 6  # latent pixels of context: wider than the base decoder's receptive field (tests check it)


@dataclass(frozen=True)
class AutoencoderConfig:
    in_ch: int = 3
    base_ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    latent_ch: int = 8
    # a residual refiner at full resolution after the decoder (0 = none): `refine_blocks` PixelNorm ResBlocks of
    # `refine_ch` channels on the decoder's last features, added to its output. Its last conv starts at zero, so a
    # decoder grown by it (gigagen train --decoder-refine) first draws exactly what it drew before.
    refine_ch: int = 0
    refine_blocks: int = 2

    @property
    def factor(self) -> int:
        """Pixels per latent pixel along one axis."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def decode_halo(self) -> int:
        """Latent pixels of context a tiled decode needs for every pixel to equal the untiled decode: the base
        decoder's, plus the radius of the refiner's 2 * refine_blocks + 1 extra 3x3 convolutions at full resolution."""
        extra = 2 * self.refine_blocks + 1 if self.refine_ch else 0
        return BASE_DECODE_HALO + -(-extra // self.factor)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chs = [cfg.base_ch * m for m in cfg.ch_mult]
        self.stem = nn.Conv2d(cfg.in_ch, chs[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = chs[0]
        for i, c in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, c, spatial_norm=False))
                cin = c
            if i < len(chs) - 1:
                blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.norm = PixelNorm(cin)
        self.head = nn.Conv2d(cin, cfg.latent_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.norm(self.blocks(self.stem(x)))))


class Decoder(nn.Module):
    """Latent -> pixels. With `noise_ch`, it reads that many standard normal channels after the latent's (a level
    decoder that samples: BundleConfig.level_decoder_noise); the autoencoder's own decoder reads none."""

    def __init__(self, cfg: AutoencoderConfig, noise_ch: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.noise_ch = noise_ch
        chs = [cfg.base_ch * m for m in cfg.ch_mult][::-1]
        self.stem = nn.Conv2d(cfg.latent_ch + noise_ch, chs[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = chs[0]
        for i, c in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, c, spatial_norm=False))
                cin = c
            if i < len(chs) - 1:
                blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                blocks.append(nn.Conv2d(c, chs[i + 1], 3, padding=1))
                cin = chs[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm = PixelNorm(cin)
        self.head = nn.Conv2d(cin, cfg.in_ch, 3, padding=1)
        self.refine = Refiner(cin, cfg.refine_ch, cfg.refine_blocks, cfg.in_ch) if cfg.refine_ch else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.blocks(self.stem(z))))
        out = self.head(h)
        return out if self.refine is None else out + self.refine(h)


class Refiner(nn.Module):
    """Full-resolution residual head: the decoder's last stage has only base_ch channels, too few to draw
    pixel-scale detail (chromatin, fibre edges); this adds width there, where high frequencies live."""

    def __init__(self, cin: int, width: int, blocks: int, cout: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(cin, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width, width, spatial_norm=False) for _ in range(blocks)])
        self.norm = PixelNorm(width)
        self.out = zero_init(nn.Conv2d(width, cout, 3, padding=1))  # the grown decoder starts as the old one

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.norm(self.blocks(self.inp(h)))))


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1], H and W multiples of factor -> (B, latent_ch, H/f, W/f)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_ch, h, w) -> (B, 3, h*f, w*f), roughly in [-1, 1] (clamp before use)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z
