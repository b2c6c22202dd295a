#!/usr/bin/env python
"""Can a refinement level draw its own magnification? Sample cascade level K of the held-out band (or the
training part) from the band's *real* level K + 1, as `gigagen slide` samples it, and write it between the
real level K and, when the parent is a latent of the same magnification (a pixel level under its latent),
the autoencoder's decoding of that real parent: the deterministic reading of the same information (and, for a
bundle's decoded level, its level decoder's reading, which is what `gigagen slide` uses there).

`scripts/sample_real_parent.py` does this for the 20x level with nucleus and texture statistics; this script
is for the levels above it, whose bands are too small for 256 px statistics tiles, so it writes images only.

    .venv/bin/python scripts/sample_level.py --checkpoint runs/px3/bundle-best.safetensors --level 1 --out L1.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.condition import cond_for_region  # noqa: E402
from gigagen.engine.decode import read_level, to_uint8  # noqa: E402
from gigagen.engine.levels import unfold  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, load_bundle  # noqa: E402
from gigagen.models.denoiser import BundleRunner  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.gan_decoder import sample_finest  # noqa: E402
from gigagen.train.loop import checked_zooms, level_array  # noqa: E402


def as_image(runner: BundleRunner, z: np.ndarray, level: int) -> np.ndarray:
    """A level's scaled array as RGB uint8: unfolded pixels, or the decoded latent."""
    c = runner.bundle.config
    if level in c.pixel_levels:
        return to_uint8(unfold(z / c.level_scales[level], c.level_cells[level]).transpose(1, 2, 0))
    with torch.no_grad():
        return to_uint8(runner.decode_fn(z[None])[0].transpose(1, 2, 0))


def band_levels(bundle: ModelBundle, reference: str, level: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The band box-downsampled to level K's magnification and to its parent's, as training builds its levels,
    cut to whole parent cells and UNet tiles."""
    c = bundle.config
    zooms = checked_zooms(c.magnifications)
    train, held = split_reference(reference, 0.2)
    rgb = train if split == "train" else held
    m = math.prod(zooms[: level + 1]) * c.level_cells[level + 1] * c.unet.divisor
    li = D.build_levels(rgb[: rgb.shape[0] // m * m, : rgb.shape[1] // m * m], zooms[: level + 1], 1)
    return li.images[level], li.images[level + 1]


X0_TIMES = (50, 150, 300, 500, 800)


def x0_errors(runner: BundleRunner, level: int, real: np.ndarray, parent: np.ndarray, timesteps: tuple[int, ...]) -> list[float]:
    """One network call per timestep on the real level noised to it (fixed noise): the predicted x0's squared
    error over the real level's variance. Small errors with speckled samples mean the network denoises real
    data well and drifts on its own trajectory."""
    c = runner.bundle.config
    cond = cond_for_region(parent, 0, real.shape[1], 0, real.shape[2], c.parent_factors[level])
    noise = np.random.default_rng(0).standard_normal(real.shape).astype(np.float32)
    out = []
    for t in timesteps:
        a = float(runner.alphas_cumprod[t])
        x0, _ = runner.model_fn((np.sqrt(a) * real + np.sqrt(1 - a) * noise)[None], t, level, cond[None])
        out.append(float(((x0[0] - real) ** 2).mean() / real.var()))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--level", type=int, default=1, help="cascade level to sample, 0 = finest (default 1)")
    p.add_argument("--split", default="held", choices=("held", "train"))
    p.add_argument("--seeds", default="1,2", help="one sample per seed, comma-separated")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--out", required=True, help="PNG: real level, [the decoded real parent,] one row per seed, at 2x")
    args = p.parse_args()
    bundle = load_bundle(args.checkpoint)
    c = bundle.config
    if not 0 <= args.level < len(c.magnifications) - 1:
        print(f"sample_level: --level must be a refinement level 0..{len(c.magnifications) - 2}", file=sys.stderr)
        return 2
    runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16, c.guidance_per_level)
    seeds = [int(s) for s in args.seeds.split(",")]
    rgb, parent_rgb = band_levels(bundle, args.reference, args.level, args.split)
    parent = level_array(bundle, parent_rgb, args.level + 1)
    rows = [rgb]
    if c.magnifications[args.level] == c.magnifications[args.level + 1]:
        rows.append(as_image(runner, parent, args.level + 1))
        print(f"row {len(rows)}: the autoencoder's decoding of the real parent latent")
    if c.decoded_level == args.level:  # what gigagen slide makes of this level: the level decoder's reading
        with torch.no_grad():
            rows.append(read_level(parent, runner.level_decode_fn, c.ae.factor, c.level_noise(seeds[0])))
        print(f"row {len(rows)}: the level decoder's reading of the real parent latent (gigagen slide's level {args.level})")
    errors = x0_errors(runner, args.level, level_array(bundle, rgb, args.level), parent, X0_TIMES)
    print("x0 error / variance from the real level noised to t = "
          + ", ".join(f"{t}: {e:.3f}" for t, e in zip(X0_TIMES, errors)))
    cell = c.level_cells[args.level]
    for seed in seeds:
        z = sample_finest(runner, parent, (rgb.shape[0] // cell, rgb.shape[1] // cell), seed, args.steps, args.eta,
                          level=args.level)
        rows.append(as_image(runner, z, args.level))
        print(f"row {len(rows)}: level {args.level} ({c.magnifications[args.level]:g}x) sampled from the real parent, seed {seed}")
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.Resampling.NEAREST).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
