"""UNet denoiser for one latent tile, conditioned on timestep, magnification level and the level above.

Input channels are the noisy latent concatenated with the conditioning latent (the parent level over
the same field of view, upsampled). A learned null flag (cond_mask = 0, conditioning zeroed) serves the
unconditioned layout level and classifier-free guidance (Ho & Salimans 2022). With `cond_aug`, the
network also takes the level of Gaussian noise its conditioning was corrupted with (conditioning
augmentation, Ho et al. 2022, "Cascaded Diffusion Models"), as a second timestep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from gigagen.models.layers import ResBlock, SelfAttention, group_norm, rowwise_linear, timestep_embedding, zero_init


@dataclass(frozen=True)
class UNetConfig:
    latent_ch: int = 8
    base_ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_lowest: bool = True
    n_levels: int = 3
    dropout: float = 0.0
    cond_aug: bool = False  # takes the conditioning's noise timestep (see module docstring)
    head_blocks: int = 0  # extra residual blocks at full resolution before the output (see UNet.head)
    # channels of the conditioning (the parent level's array); 0 = latent_ch. Differs from latent_ch when the parent
    # level is held in another autoencoder's latent (BundleConfig.coarse_ae)
    cond_ch: int = 0

    @property
    def cond_channels(self) -> int:
        """Channels of the parent level the network reads beside its own latent."""
        return self.cond_ch or self.latent_ch

    @property
    def divisor(self) -> int:
        """Tile sides must be multiples of this."""
        return 2 ** (len(self.ch_mult) - 1)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chs = [cfg.base_ch * m for m in cfg.ch_mult]
        emb_dim = 4 * cfg.base_ch
        self.time_mlp = nn.Sequential(nn.Linear(cfg.base_ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.level_emb = nn.Embedding(cfg.n_levels, emb_dim)
        self.cond_flag_emb = nn.Embedding(2, emb_dim)
        if cfg.cond_aug:
            # zero-initialised: a network continued from one without it starts out unchanged
            self.cond_aug_emb = zero_init(nn.Linear(cfg.base_ch, emb_dim))
        self.stem = nn.Conv2d(cfg.latent_ch + cfg.cond_channels, chs[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips = [chs[0]]
        cin = chs[0]
        for i, c in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(cin, c, emb_dim, dropout=cfg.dropout))
                cin = c
                skips.append(c)
            if i < len(chs) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(cin, cin, emb_dim, dropout=cfg.dropout)
        self.mid_attn = SelfAttention(cin) if cfg.attn_lowest else nn.Identity()
        self.mid2 = ResBlock(cin, cin, emb_dim, dropout=cfg.dropout)

        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chs))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(cin + skips.pop(), c, emb_dim, dropout=cfg.dropout))
                cin = c
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        # Full-resolution head: where a latent pixel's exact value is decided (a nucleus is 1-2 latent pixels
        # at f8), the base UNet has one block. Each head block's last conv starts at zero, so it starts as the
        # identity and a trained network grown by head blocks (`gigagen train --init-from B --unet-head-blocks N`)
        # starts out computing exactly what it did.
        self.head = nn.ModuleList(ResBlock(cin, cin, emb_dim, dropout=cfg.dropout) for _ in range(cfg.head_blocks))
        for block in self.head:
            zero_init(block.conv2)
        self.out_norm = group_norm(cin)
        self.out = zero_init(nn.Conv2d(cin, cfg.latent_ch, 3, padding=1))

    def _embed(self, t: torch.Tensor, level: torch.Tensor, flag: torch.Tensor, cond_t: torch.Tensor | None) -> torch.Tensor:
        """(B,) timesteps, levels, cond flags and cond noise timesteps -> (B, emb_dim); batch-size invariant
        at inference."""
        lin1, act, lin2 = self.time_mlp
        h = rowwise_linear(lin2, act(rowwise_linear(lin1, timestep_embedding(t, self.cfg.base_ch))))
        h = h + self.level_emb(level) + self.cond_flag_emb(flag)
        if self.cfg.cond_aug:
            ct = torch.zeros_like(t) if cond_t is None else cond_t
            h = h + rowwise_linear(self.cond_aug_emb, timestep_embedding(ct, self.cfg.base_ch))
        elif cond_t is not None and bool((cond_t != 0).any()):
            raise ValueError("this network was not trained with conditioning augmentation (cond_t must be 0)")
        return h

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor,
        cond_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, C, h, w), cond: (B, cond_channels, h, w); t: (B,) float; level: (B,) long; cond_mask: (B,) 1/0; cond_t: (B,) float noise
        timestep of cond (None = clean) -> (B, C, h, w)."""
        flag = (cond_mask > 0.5).long()
        emb = self._embed(t, level, flag, cond_t)
        cond = cond * cond_mask.to(cond.dtype)[:, None, None, None]
        h = self.stem(torch.cat([x, cond], dim=1))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        for block in self.head:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))
