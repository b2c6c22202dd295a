#!/usr/bin/env python
"""How much of the 20x latent can a small network read off each form of the 5x parent?

The 20x denoiser smears nuclei even on its training part (model card, tenth and eleventh sections). One
candidate cause: the parent reaches it as a 5x *latent*, bilinearly upsampled 4x, where one parent latent
pixel covers 32 x 32 px at 20x and where in that square a nucleus sits is folded into 12 channel values.
This script fits the same small convolutional regressor (parent form -> 20x latent, mean squared error)
on the training part for each form of the parent and reports its error on the held-out band:

- latent: the engine's conditioning (`cond_for_region`, what the denoiser gets);
- latent + phase: the same plus sin/cos of each 20x latent pixel's position inside its parent pixel;
- decoded 5x: the parent latent decoded to 5x RGB (what inference could compute from a generated 5x
  level), each 2 x 2 px block of it stacked onto the 20x latent pixel it covers (pixel unshuffle);
- real 5x: the same from the real 5x image (the information in the 5x pixels themselves, for reference).

The regressor's prediction is its estimate of the conditional mean of the 20x latent given the parent:
the lower its error, the more of the 20x structure that parent form hands a small network. The denoiser's
own one-step x0 at t = 999 (its conditional mean, given the latent parent) is printed beside it.

    .venv/bin/python scripts/cond_information.py [--steps 1500] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.condition import cond_for_region  # noqa: E402
from gigagen.engine.decode import to_uint8  # noqa: E402
from gigagen.engine.levels import fold  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, load_bundle  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.loop import encode_image, level_array, checked_zooms  # noqa: E402

CPU = torch.device("cpu")
TILE = 32  # latent crop side, as the denoiser is trained
FORMS = ("latent", "latent+phase", "decoded 5x", "real 5x")


def phase(h: int, w: int, factor: int) -> np.ndarray:
    """(4, h, w): sin/cos of each child pixel's row and column position inside its parent pixel."""
    a = 2 * np.pi * (np.arange(max(h, w)) % factor) / factor
    ys, xs = np.meshgrid(a[:h], a[:w], indexing="ij")
    return np.stack([np.sin(ys), np.cos(ys), np.sin(xs), np.cos(xs)]).astype(np.float32)


def part_arrays(b: ModelBundle, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(20x latent, tissue mask at latent resolution, each parent form at latent resolution) of one image."""
    f, zoom, s = b.config.ae.factor, checked_zooms(b.config.magnifications)[0], b.config.latent_scale
    z = level_array(b, rgb, 0)
    small = D.downsample(rgb, zoom)
    parent = encode_image(b.ae, small, CPU, torch.bfloat16) * s
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = b.ae.decode(torch.from_numpy(parent / s)[None]).float().clamp(-1, 1)[0].numpy()
    h, w = z.shape[1:]
    latent = cond_for_region(parent, 0, h, 0, w, zoom)
    k = f // zoom  # 5x pixels per 20x latent pixel, per side
    forms = {
        "latent": latent,
        "latent+phase": np.concatenate([latent, phase(h, w, zoom)]),
        "decoded 5x": fold(decoded, k),
        "real 5x": fold(D.to_tensor_range(small), k),
    }
    mask = D.tissue_mask(rgb)[f // 2 :: f, f // 2 :: f]
    return z, mask, forms


class Regressor(nn.Module):
    """Five 3x3 conv layers of 64 channels, residual (receptive field 13 latent px = 104 px at 20x)."""

    def __init__(self, cin: int, cout: int, ch: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cin, ch, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, cout, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.out(h)


def crops(variants: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random TILE^2 crops (>= 50% tissue) of (parent form, 20x latent) from random variants."""
    xs, ys = [], []
    while len(xs) < n:
        z, mask, c = variants[int(rng.integers(len(variants)))]
        y, x = int(rng.integers(z.shape[1] - TILE + 1)), int(rng.integers(z.shape[2] - TILE + 1))
        if mask[y : y + TILE, x : x + TILE].mean() < 0.5:
            continue
        xs.append(c[:, y : y + TILE, x : x + TILE])
        ys.append(z[:, y : y + TILE, x : x + TILE])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def fit(variants: list, steps: int, seed: int) -> Regressor:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Regressor(variants[0][2].shape[0], variants[0][0].shape[0])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    # constant, then linearly down to 0 over the last 30%: each form gets the same schedule
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (steps - i) / (0.3 * steps)))
    for _ in range(steps):
        c, z = crops(variants, 16, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(net(c).float(), z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def masked_mse(pred: np.ndarray, z: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over tissue latent pixels, relative to the latent's variance there."""
    m = mask[None].astype(np.float32)
    err = float(((pred - z) ** 2 * m).sum() / (m.sum() * z.shape[0]))
    mu = (z * m).sum(axis=(1, 2), keepdims=True) / m.sum()
    var = float(((z - mu) ** 2 * m).sum() / (m.sum() * z.shape[0]))
    return err / var


def denoiser_x0(b: ModelBundle, parent_cond: np.ndarray, seed: int) -> np.ndarray:
    """The denoiser's one-step x0 at t = 999 from pure noise given the latent parent (whole image at once)."""
    t = b.config.n_train_steps - 1
    shape = (1, b.config.ae.latent_ch, *parent_cond.shape[-2:])
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v = b.unet(x, torch.tensor([float(t)]), torch.tensor([0]), torch.from_numpy(parent_cond[None]), torch.tensor([1.0])).float()
    from gigagen.sampling.schedules import cosine_alphas_cumprod

    a = float(cosine_alphas_cumprod(b.config.n_train_steps)[t])
    return (np.sqrt(a) * x - np.sqrt(1 - a) * v)[0].numpy()  # v-prediction: x0 = sqrt(a) x_t - sqrt(1-a) v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--steps", type=int, default=1500, help="regressor training steps per parent form (batch 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG: a 256^2 px held-out window side by side: reconstruction | denoiser x0 | each form's prediction, decoded")
    args = p.parse_args()
    torch.set_num_threads(2)
    b = load_bundle(args.checkpoint)
    m = b.config.ae.factor * checked_zooms(b.config.magnifications)[0]
    train, held = (a[: a.shape[0] // m * m, : a.shape[1] // m * m] for a in split_reference(args.reference, 0.2))
    t0 = time.time()
    variants = [part_arrays(b, D.dihedral(train, k)) for k in range(8)]  # the 8 orientations, as training uses
    zh, mh, held_forms = part_arrays(b, held)
    zt, mt, train_forms = variants[0]
    print(f"encoded in {time.time() - t0:.0f} s; training part {zt.shape[1:]} latent px, held-out band {zh.shape[1:]}")
    x0 = denoiser_x0(b, held_forms["latent"], args.seed)
    x0t = denoiser_x0(b, train_forms["latent"], args.seed)
    print("| parent form | channels | held-out error / variance | training-part error / variance | fit s |")
    print("|---|---|---|---|---|")
    print(f"| the denoiser's x0 at t = 999 (latent parent, 4.0 M params) | 12 | {masked_mse(x0, zh, mh):.3f} | {masked_mse(x0t, zt, mt):.3f} | - |")
    preds = {}
    for name in FORMS:
        t0 = time.time()
        net = fit([(z, mk, c[name]) for z, mk, c in variants], args.steps, args.seed)
        with torch.no_grad():
            ph = net(torch.from_numpy(held_forms[name])[None]).float()[0].numpy()
            pt = net(torch.from_numpy(train_forms[name])[None]).float()[0].numpy()
        preds[name] = ph
        print(f"| {name} | {held_forms[name].shape[0]} | {masked_mse(ph, zh, mh):.3f} | {masked_mse(pt, zt, mt):.3f} | {time.time() - t0:.0f} |",
              flush=True)
    if args.out:
        s = b.config.latent_scale
        win = (slice(None), slice(8, 40), slice(zh.shape[2] - 72, zh.shape[2] - 40))  # epidermis, right of the band
        panels = [zh[win], x0[win]] + [preds[n][win] for n in FORMS]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pics = [to_uint8(b.ae.decode(torch.from_numpy(np.ascontiguousarray(r) / s)[None]).float().clamp(-1, 1)[0].numpy().transpose(1, 2, 0))
                    for r in panels]
        gap = np.full((pics[0].shape[0], 4, 3), 255, np.uint8)
        Image.fromarray(np.concatenate([x for pic in pics for x in (pic, gap)][:-1], axis=1)).save(args.out)
        print(f"wrote {args.out}: reconstruction, denoiser x0 at t = 999, then {', '.join(FORMS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
