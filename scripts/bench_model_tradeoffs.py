#!/usr/bin/env python
"""Measure the model-size trade-offs behind the default: speed per tile under bf16 and short-run quality.

    python scripts/bench_model_tradeoffs.py speed                 # seconds, no data needed
    python scripts/bench_model_tradeoffs.py ae --steps 100        # short autoencoder runs, held-out PSNR/SSIM

Times are CPU seconds divided by the thread count (process time: on a shared machine wall time would
measure the other users), i.e. the wall time on an otherwise idle machine if threads scale perfectly.
`speed` extrapolates the network time of `gigagen slide --size 4096` (20 DDIM steps, cascade 20x/5x/1.25x,
gridshift tiles of 32 latent pixels, guidance 1) from measured per-tile costs; it excludes pyramid and
export time, which `gigagen slide` itself reports. Numbers depend on how busy the 2 cores are.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig

AE_CONFIGS = {  # name: (base, ch_mult, latent_ch)
    "f4-c4-b16": (16, (1, 2, 4), 4),
    "f8-c8-b16": (16, (1, 2, 4, 8), 8),
    "f8-c12-b16": (16, (1, 2, 4, 8), 12),
    "f8-c16-b16": (16, (1, 2, 4, 8), 16),
    "f8-c12-b32": (32, (1, 2, 4, 4), 12),
}
UNET_CONFIGS = {  # name: (base, ch_mult, blocks)
    "b32-122-r1": (32, (1, 2, 2), 1),  # the autoguidance network of the default model
    "b64-122-r1": (64, (1, 2, 2), 1),
    "b96-122-r1": (96, (1, 2, 2), 1),
    "b128-122-r1": (128, (1, 2, 2), 1),
    "b64-124-r2": (64, (1, 2, 4), 2),
}


def _time(fn, reps: int) -> float:
    """CPU seconds per call: on a shared machine process time, unlike wall time, ignores other users."""
    fn()
    t = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t) / reps / torch.get_num_threads()


def tiles_4096(f: int, tile: int = 32, steps: int = 20) -> int:
    """UNet tile evaluations of a 4096^2 slide: 20x, 5x, 1.25x latents, one pass per tile per step."""
    n = 0
    for side in (4096 // f, 1024 // f, 256 // f):
        n += max(1, -(-side // tile)) ** 2
    return n * steps


@torch.no_grad()
def speed(latent_ch: int = 12) -> None:
    ac = torch.autocast("cpu", dtype=torch.bfloat16)
    print("| autoencoder | params M | decode ms / 512^2 chunk | est. decode 4096^2 s |")
    print("|---|---|---|---|")
    for name, (base, mult, ch) in AE_CONFIGS.items():
        ae = Autoencoder(AutoencoderConfig(base_ch=base, ch_mult=mult, latent_ch=ch)).eval().to(memory_format=torch.channels_last)
        f = ae.cfg.factor
        z = torch.randn(1, ch, 512 // f + 12, 512 // f + 12).contiguous(memory_format=torch.channels_last)
        with ac:
            s = _time(lambda: ae.decode(z), 2)
        p = sum(x.numel() for x in ae.parameters()) / 1e6
        print(f"| {name} | {p:.2f} | {s * 1000:.0f} | {s * 64:.1f} |")
    print("\n| UNet | params M | ms / 32^2 tile (batch 16) | est. UNet 4096^2 s at f8 | at f4 |")
    print("|---|---|---|---|---|")
    for name, (base, mult, r) in UNET_CONFIGS.items():
        u = UNet(UNetConfig(latent_ch=latent_ch, base_ch=base, ch_mult=mult, num_res_blocks=r)).eval().to(memory_format=torch.channels_last)
        x = torch.randn(16, latent_ch, 32, 32).contiguous(memory_format=torch.channels_last)
        t, lv, m = torch.full((16,), 500.0), torch.zeros(16, dtype=torch.long), torch.ones(16)
        with ac:
            s = _time(lambda: u(x, t, lv, x, m), 3) / 16
        p = sum(q.numel() for q in u.parameters()) / 1e6
        print(f"| {name} | {p:.1f} | {s * 1000:.1f} | {s * tiles_4096(8):.0f} | {s * tiles_4096(4):.0f} |")


def ae_quality(steps: int, region: str, names: list[str]) -> None:
    from gigagen.train import data as D
    from gigagen.train.loop import TrainConfig, ae_batch, ema_update
    from gigagen.train.losses import ae_loss
    from gigagen.train.metrics import ae_reconstruction

    rgb, mpp = D.read_image(region)
    rgb = D.resize(rgb, mpp / 0.5)
    train_img, held = D.split_holdout(rgb, 0.2)
    print("| autoencoder | steps (batch 8, 128 px) | CPU s | held-out PSNR dB | held-out SSIM |")
    print("|---|---|---|---|---|")
    for name in names:
        base, mult, ch = AE_CONFIGS[name]
        cfg = TrainConfig(inputs=[region], out="", ae=AutoencoderConfig(base_ch=base, ch_mult=mult, latent_ch=ch), ae_lr=6e-4)
        levels = [D.build_levels(train_img, (4, 4), cfg.ae.factor)]
        torch.manual_seed(0)
        ae = Autoencoder(cfg.ae).to(memory_format=torch.channels_last)
        ema = Autoencoder(cfg.ae).to(memory_format=torch.channels_last)
        ema.load_state_dict(ae.state_dict())
        opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr)
        rng, t0 = np.random.default_rng(0), time.process_time()
        for step in range(1, steps + 1):
            x = ae_batch(levels, cfg, rng).contiguous(memory_format=torch.channels_last)
            recon, z = ae(x)
            loss, _ = ae_loss(x, recon, z)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            ema_update(ema, ae, min(0.999, (1 + step) / (10 + step)))
        cpu = time.process_time() - t0
        ps, ss = ae_reconstruction(ema.eval(), held, tile=256)
        print(f"| {name} | {steps} | {cpu:.0f} | {ps:.2f} | {ss:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("speed", "ae"))
    ap.add_argument("--steps", type=int, default=100, help="training steps per autoencoder (ae)")
    ap.add_argument("--region", default="data/cmu_small_region.svs")
    ap.add_argument("--configs", default="f4-c4-b16,f8-c8-b16,f8-c12-b16,f8-c16-b16")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "speed":
        speed()
    else:
        ae_quality(a.steps, a.region, a.configs.split(","))


if __name__ == "__main__":
    main()
