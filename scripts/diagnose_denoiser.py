#!/usr/bin/env python
"""Where a model bundle stands: autoencoder reconstruction and one-step denoising of real tiles.

For held-out 256-px tiles of the reference region (never trained on) it shows, side by side:
the real tile, the autoencoder's reconstruction, and the denoiser's one-step x0 prediction from
the noised real latent at t = 200, 500, 800 (of 1000; the 20x level, conditioned on the real 5x
parent latent as the cascade conditions it). It prints the x0 error relative to the latent variance
per t with and without the parent, and that of the upsampled parent alone. A cascade denoiser must
beat both at large t: one that does not use its parent cannot follow the layout the coarser levels
drew (this check found the level-spacing bug fixed on 2026-11-23).

    .venv/bin/python scripts/diagnose_denoiser.py [--checkpoint B] [--out docs/denoise_diagnostic.png]
        [--tiles N] [--split held|train]

With --split train the same is measured on tiles of the training part: a denoiser whose error falls
there but not on the held-out band is learning the one region rather than tissue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.condition import cond_for_region  # noqa: E402
from gigagen.models.checkpoint import load_bundle  # noqa: E402
from gigagen.sampling.schedules import cosine_alphas_cumprod  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train.loop import level_array, checked_zooms  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.metrics import grid_tiles  # noqa: E402

TIMES = (200, 500, 800)
REPORT_TIMES = (200, 500, 800, 950)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--tiles", type=int, default=3)
    p.add_argument("--split", choices=("held", "train"), default="held",
                   help="denoise tiles of the held-out band (default) or of the training part: the gap between the two is overfitting")
    p.add_argument("--out", default=str(ROOT / "docs" / "denoise_diagnostic.png"))
    args = p.parse_args()
    torch.manual_seed(0)
    bundle = load_bundle(args.checkpoint)
    ae, unet, scale = bundle.ae, bundle.unet, bundle.config.latent_scale
    band = split_reference(args.reference, 0.2)[0 if args.split == "train" else 1]  # (training part, held-out band)
    f, zoom = bundle.config.ae.factor, checked_zooms(bundle.config.magnifications)[0]
    m = f * zoom
    band = band[: band.shape[0] // m * m, : band.shape[1] // m * m]
    tiles, pos = grid_tiles(band, 256, 256, 0.8)
    pick = np.linspace(0, len(tiles) - 1, args.tiles).round().astype(int)
    abar = torch.tensor(cosine_alphas_cumprod(1000), dtype=torch.float32)
    rows, errs = [], {(t, c): [] for t in REPORT_TIMES for c in ("parent", "none", "parent only")}
    gen = torch.Generator().manual_seed(0)
    parent = level_array(bundle, D.downsample(band, zoom), 1)  # the real 5x level as the denoiser sees it (latent or pixels)
    pf = bundle.config.parent_factors[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in pick:
            tile, (y, x) = tiles[i], pos[i]
            z = ae.encode(torch.from_numpy(D.to_tensor_range(tile[None]))).float() * scale
            c = torch.from_numpy(cond_for_region(parent, y // f, (y + 256) // f, x // f, (x + 256) // f, pf))[None]
            row = [tile, to_uint8(ae.decode(z / scale))]
            for t in REPORT_TIMES:
                a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
                xt = a * z + s * torch.randn(z.shape, generator=gen)
                for name, cond, flag in (("parent", c, 1.0), ("none", torch.zeros_like(z), 0.0)):
                    v = unet(xt, torch.tensor([float(t)]), torch.tensor([0]), cond, torch.tensor([flag])).float()
                    x0 = a * xt - s * v
                    errs[(t, name)].append(((x0 - z) ** 2).mean().item() / z.var().item())
                    if name == "parent" and t in TIMES:
                        row.append(to_uint8(ae.decode(x0 / scale)))
                errs[(t, "parent only")].append(((c - z) ** 2).mean().item() / z.var().item())
            rows.append(np.concatenate(row, 1))
    print("x0 error / latent variance (20x level, one step from the noised real latent)")
    print("t     with parent  without  parent alone")
    for t in REPORT_TIMES:
        print(f"{t:<5} {np.mean(errs[(t, 'parent')]):>11.3f} {np.mean(errs[(t, 'none')]):>8.3f} {np.mean(errs[(t, 'parent only')]):>13.3f}")
    sheet = Image.fromarray(np.concatenate(rows, 0))
    head = Image.new("RGB", (sheet.width, 18), "white")
    draw = ImageDraw.Draw(head)
    for i, label in enumerate([f"real ({'held out' if args.split == 'held' else 'training'})", "autoencoder"] + [f"denoised from t={t}, 5x parent" for t in TIMES]):
        draw.text((4 + 256 * i, 3), label, fill="black")
    out = Image.new("RGB", (sheet.width, sheet.height + 18), "white")
    out.paste(head, (0, 0))
    out.paste(sheet, (0, 18))
    out = out.resize((out.width // 2, out.height // 2), Image.Resampling.LANCZOS)
    out.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
