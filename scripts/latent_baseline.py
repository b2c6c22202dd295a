#!/usr/bin/env python
"""How much has the 20x denoiser learned? Two checks on a model bundle:

1. Is its latent easy to diffuse? Adjacent-pixel correlation of the 20x training latent and the share
   of its energy a 2x / 4x box-downsampling keeps, next to the image's at the matching scales (a latent
   near white noise would be hard for any denoiser).
2. Is the denoiser better than a linear filter? On held-out 32^2 latent tiles, one-step x0 mean squared
   error of the denoiser (given the real parent level, as the cascade conditions it) against a
   multichannel Wiener filter (per-frequency 12x12 cross-spectra fitted to training-latent tiles, no
   parent), on the same noise. A well-trained denoiser beats a linear filter by a wide margin.

    .venv/bin/python scripts/latent_baseline.py [--checkpoint B]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.condition import cond_for_region  # noqa: E402
from gigagen.models.checkpoint import load_bundle  # noqa: E402
from gigagen.sampling.schedules import cosine_alphas_cumprod  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.loop import encode_image, checked_zooms  # noqa: E402

TILE = 32
TIMES = (200, 500, 800, 950)


def box_energy(a: np.ndarray, f: int) -> float:
    """Share of the (mean-removed, per channel) energy that an f x f box-downsampling keeps."""
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    h, w = a.shape[-2] // f * f, a.shape[-1] // f * f
    a = a[..., :h, :w]
    lo = a.reshape(*a.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1))
    return float((lo**2).mean() / (a**2).mean())


def tissue_tiles(z: np.ndarray, mask: np.ndarray, stride: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, z.shape[1] - TILE + 1, stride) for x in range(0, z.shape[2] - TILE + 1, stride)
            if mask[y : y + TILE, x : x + TILE].mean() > 0.8]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    args = p.parse_args()
    b = load_bundle(args.checkpoint)
    scale, f, zoom = b.config.latent_scale, b.config.ae.factor, checked_zooms(b.config.magnifications)[0]
    cpu = torch.device("cpu")
    train, held = split_reference(args.reference, 0.2)
    m = f * zoom
    train, held = (a[: a.shape[0] // m * m, : a.shape[1] // m * m] for a in (train, held))
    zt = encode_image(b.ae, train, cpu, torch.bfloat16) * scale
    zh = encode_image(b.ae, held, cpu, torch.bfloat16) * scale
    parent = encode_image(b.ae, D.downsample(held, zoom), cpu, torch.bfloat16) * scale

    zc = zt - zt.mean(axis=(1, 2), keepdims=True)
    cx = float((zc[:, :, 1:] * zc[:, :, :-1]).mean() / (zc**2).mean())
    cy = float((zc[:, 1:] * zc[:, :-1]).mean() / (zc**2).mean())
    grey = train.astype(np.float32).mean(-1)
    print(f"20x training latent {zt.shape}: adjacent-pixel correlation x {cx:.2f}, y {cy:.2f}")
    print(f"energy kept by box-downsampling: latent 2x {box_energy(zt, 2):.2f}, 4x {box_energy(zt, 4):.2f}; "
          f"image at the same scales ({f * 2}x, {f * 4}x) {box_energy(grey, f * 2):.2f}, {box_energy(grey, f * 4):.2f}")

    mt = D.tissue_mask(train)[f // 2 :: f, f // 2 :: f]
    mh = D.tissue_mask(held)[f // 2 :: f, f // 2 :: f]
    train_pos, held_pos = tissue_tiles(zt, mt, 8), tissue_tiles(zh, mh, 16)
    mu = np.mean([zt[:, y : y + TILE, x : x + TILE].mean(axis=(1, 2)) for y, x in train_pos], 0)[:, None, None]
    spec = np.stack([np.fft.fft2(zt[:, y : y + TILE, x : x + TILE] - mu) for y, x in train_pos])  # (N, C, T, T)
    cross = np.einsum("nift,njft->ftij", spec, spec.conj()) / len(train_pos) / TILE**2  # (T, T, C, C)
    eye = np.eye(zt.shape[0])
    abar = cosine_alphas_cumprod(b.config.n_train_steps)
    rng = np.random.default_rng(0)
    var = np.mean([zh[:, y : y + TILE, x : x + TILE].var(axis=(1, 2)).mean() for y, x in held_pos])
    print(f"one-step x0 MSE on {len(held_pos)} held-out {TILE}^2 latent tiles ({len(train_pos)} training tiles fit the "
          f"filter; mean tile variance {var:.3f})")
    print("t     denoiser+parent  Wiener (no parent)  denoiser gain")
    for t in TIMES:
        a = float(abar[t])
        gain = cross @ np.linalg.inv(cross + (1 - a) / a * eye)
        e_net = e_lin = 0.0
        for y, x in held_pos:
            z = zh[:, y : y + TILE, x : x + TILE]
            xt = np.sqrt(a) * z + np.sqrt(1 - a) * rng.standard_normal(z.shape)
            noisy = np.fft.fft2(xt / np.sqrt(a) - mu).transpose(1, 2, 0)[..., None]
            lin = np.real(np.fft.ifft2((gain @ noisy)[..., 0].transpose(2, 0, 1))) + mu
            c = torch.from_numpy(cond_for_region(parent, y, y + TILE, x, x + TILE, zoom)[None]).float()
            xt_t = torch.from_numpy(xt[None]).float()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                v = b.unet(xt_t, torch.tensor([float(t)]), torch.tensor([0]), c, torch.tensor([1.0])).float()
            x0 = (np.sqrt(a) * xt_t - np.sqrt(1 - a) * v)[0].numpy()
            e_net += float(((x0 - z) ** 2).mean())
            e_lin += float(((lin - z) ** 2).mean())
        n = len(held_pos)
        print(f"{t:<5} {e_net / n:>15.3f} {e_lin / n:>19.3f} {1 - e_net / e_lin:>13.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
