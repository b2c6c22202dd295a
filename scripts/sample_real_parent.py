#!/usr/bin/env python
"""Is the 20x denoiser or the cascade above it the weak link? Sample the 20x level of the held-out
band from pure noise, as `gigagen slide` does (grid-shift, DDIM), but conditioned on the *real* latent
of the next coarser level (5x or 10x, by the bundle's cascade) of that band instead of a generated
one, and compare the result with the real band.

If these tiles look like tissue while generated slides do not, the coarser levels (or the gap between
real and generated parents) limit quality; if they do not, the 20x denoiser itself does.

    .venv/bin/python scripts/sample_real_parent.py [--checkpoint B] [--steps 20] [--autoguidance 1,1.5] [--out PNG]
    .venv/bin/python scripts/sample_real_parent.py --split train --from-real 299,599,999   # SDEdit: where nuclei are decided
    .venv/bin/python scripts/sample_real_parent.py --checkpoint B --parent decoded   # a decoded 5x level: its reading of the real 5x latent
                                                                         # (the default: the exemplar quilt of that reading)
    .venv/bin/python scripts/sample_real_parent.py --checkpoint B --parent decoded-real-nuclei   # nucleus stamps where the real nuclei are
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.decode import read_level, to_uint8  # noqa: E402
from gigagen.engine.exemplar import synthesize  # noqa: E402
from gigagen.engine.nuclei import sampled_stamps, stamp  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, load_bundle  # noqa: E402
from gigagen.models.denoiser import BundleRunner  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train import metrics as M  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.gan_decoder import sample_finest  # noqa: E402
from gigagen.train.loop import level_array, checked_zooms  # noqa: E402


def held_band(bundle: ModelBundle, reference: str, width: int = 1 << 30, split: str = "held",
              decoded: bool = False, real_nuclei: bool = False, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The held-out band (or with split "train" the training part; cut to whole parent tiles, at most `width` px
    wide) and its real parent as the denoiser sees it (scaled: the 5x latent, or at a pixel level its folded pixels);
    with `decoded`, the 5x pixels made from the real 5x latent as a slide makes them (decoded_parent)."""
    zoom = checked_zooms(bundle.config.magnifications)[0]
    train, held = split_reference(reference, 0.2)
    part = train if split == "train" else held
    m = max(bundle.config.level_cells[:2]) * zoom * 4  # whole cells of both levels (a coarse autoencoder's are larger)
    part = part[: part.shape[0] // m * m, : min(width, part.shape[1]) // m * m]
    coarse = D.downsample(part, zoom)
    if decoded:
        stamps = real_nuclei and bundle.config.nucleus_stamps is not None  # the real centres cost a nucleus search
        centres = M.nucleus_centres(part, bundle.config.mpp0) / zoom if stamps else None
        coarse = decoded_parent(bundle, coarse, seed, centres)
    return part, level_array(bundle, coarse, 1)  # the 5x latent, or its pixels at a pixel level


def decoded_parent(bundle: ModelBundle, coarse: np.ndarray, seed: int, real_centres: np.ndarray | None = None) -> np.ndarray:
    """A bundle's decoded level 1 (5x pixels) made from the real 5x pixels' latent as `gigagen slide` makes it from a
    sampled one, through uint8 as the slide's store holds it: the level decoder's reading, quilted from the bundle's
    exemplar where it matches that reading (BundleConfig.exemplar), or with its nucleus stamps painted at centres
    sampled for `seed` (or at `real_centres`, the real nuclei's, as training paints them)."""
    runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16)
    with torch.no_grad():
        z = level_array(bundle, coarse, 2)
        px = read_level(z, runner.level_decode_fn, bundle.config.ae.factor, bundle.config.level_noise(seed))
        spec = bundle.config.nucleus_stamps
        if bundle.config.exemplar is not None:
            return synthesize(runner.exemplar_bank(), z, px, bundle.config.exemplar, seed, 1)
        if spec is not None and real_centres is not None:
            return stamp(px, real_centres, spec)
        return sampled_stamps(px, spec, seed, 1) if spec is not None else px


def sample(runner: BundleRunner, parent: np.ndarray, shape: tuple[int, ...], args: argparse.Namespace,
           start: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """The 20x level of a band of `shape` pixels sampled from pure noise (or with `start`, from that latent
    noised to that timestep), conditioned on the real parent."""
    f = runner.bundle.config.ae.factor
    z = sample_finest(runner, parent, (shape[0] // f, shape[1] // f), args.seed, args.steps, args.eta, args.tile, start)
    return to_uint8(runner.decode_fn(z[None])[0].transpose(1, 2, 0))


def reconstruct(runner: BundleRunner, rgb: np.ndarray) -> np.ndarray:
    """`rgb` encoded and decoded as `gigagen slide` decodes."""
    return to_uint8(runner.decode_fn(level_array(runner.bundle, rgb, 0)[None])[0].transpose(1, 2, 0))


def report(held: np.ndarray, sampled: np.ndarray, what: str) -> None:
    """FD randconv and HF energy of the sample against the real band (and nucleus statistics at the paired positions):
    over each one's own tissue tiles, and
    paired, over the sample's tiles at the real band's tissue positions (the layout is the real one, so the
    set of tiles cannot change with the sample's own tissue fraction; stride 128 for more tiles)."""
    real_t, _ = M.grid_tiles(held, 256, 256, 0.5)
    gen_t, _ = M.grid_tiles(sampled, 256, 256, 0.5)
    fd = M.frechet_distance(M.random_conv_features(gen_t), M.random_conv_features(real_t))
    real_p, pos = M.grid_tiles(held, 256, 128, 0.5)
    gen_p = np.stack([sampled[y : y + 256, x : x + 256] for y, x in pos])
    fd_paired = M.frechet_distance(M.random_conv_features(gen_p), M.random_conv_features(real_p))
    nuc, real_nuc = M.nuclei(gen_p), M.nuclei(real_p)
    print(f"{what}: {len(gen_t)} tissue tiles, FD randconv to the same real band {fd:.3f}, at the real tissue positions "
          f"({len(pos)} tiles) {fd_paired:.3f}, HF energy {M.high_freq_energy(gen_t).mean():.4f} (real {M.high_freq_energy(real_t).mean():.4f}), "
          f"nuclei/mm2 {nuc.density_per_mm2:.0f} (real {real_nuc.density_per_mm2:.0f}), nucleus area median "
          f"{np.median(nuc.areas_um2) if len(nuc.areas_um2) else float('nan'):.1f} um2 (real {np.median(real_nuc.areas_um2):.1f})",
          flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    p.add_argument("--autoguidance", default=None, help="autoguidance weight(s), comma-separated: one sample each (default: the bundle's; 1 = off)")
    p.add_argument("--cond-aug", default=None,
                   help="parent noise timestep(s), comma-separated: one sample each, crossed with --autoguidance "
                        "(default: the bundle's; 0 = the real parent as it is)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tile", type=int, default=None, help="latent tile side (default: the bundle's)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--width", type=int, default=4096, help="pixels of the band's width to sample (default: all of it)")
    p.add_argument("--split", default="held", choices=("held", "train"),
                   help="sample the held-out band (default) or the training part: on tissue the denoiser was fit to, "
                        "it shows what the network can draw at all, next to the autoencoder's reconstruction")
    p.add_argument("--from-real", default=None,
                   help="timestep(s) T0, comma-separated: instead of sampling from pure noise, noise the part's real latent "
                        "to T0 and denoise it from there (SDEdit), one sample each: at which noise levels the network "
                        "loses what the real latent had (999 is pure noise)")
    p.add_argument("--parent", default="real", choices=("real", "decoded", "decoded-real-nuclei"),
                   help="the 5x parent: the real one (default), or for a bundle with a decoded level 1 the level "
                        "decoder's reading of the real 5x latent (what the 20x level gets in a slide, short of the latent's "
                        "errors; quilted from the bundle's exemplar, or with its nucleus stamps at sampled centres), or that "
                        "reading with the stamps at the real nucleus centres (what training gives it)")
    p.add_argument("--out", default=None, help="PNG: real band above, the sampled bands below (one per weight)")
    p.add_argument("--crop", default=None, help="X0,X1: write only these columns of the band to --out, at half size (docs)")
    p.add_argument("--zoom", default=None, help="X0,X1,Y0,Y1: write this window of every row to --out side by side, at full "
                                               "size (docs: nuclei need full resolution)")
    args = p.parse_args()
    bundle = load_bundle(args.checkpoint)
    weights = [float(w) for w in args.autoguidance.split(",")] if args.autoguidance else [bundle.config.autoguidance]
    if args.parent != "real" and bundle.config.decoded_level != 1:
        print(f"sample_real_parent: --parent {args.parent} needs a bundle that reads its level 1 with a level decoder", file=sys.stderr)
        return 2
    held, parent = held_band(bundle, args.reference, args.width, args.split, args.parent != "real",
                             args.parent == "decoded-real-nuclei", args.seed)
    noises = [int(t) for t in args.cond_aug.split(",")] if args.cond_aug else [bundle.config.cond_aug]
    rows = [held]
    if args.split == "train":  # the decoder's ceiling: what the sample would look like if the latent were right
        rows.append(reconstruct(BundleRunner(bundle, torch.device("cpu"), torch.bfloat16), held))
        report(held, rows[-1], "the autoencoder's reconstruction of the same part")
    if args.from_real:
        runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16 if args.precision == "bf16" else torch.float32,
                              bundle.config.guidance_per_level, weights[0], noises[0])
        real = level_array(bundle, held, 0)
        for t0 in (int(t) for t in args.from_real.split(",")):
            rows.append(sample(runner, parent, held.shape, args, (real, t0)))
            report(held, rows[-1], f"the real latent noised to t={t0} and denoised from the real parent ({args.steps}-step schedule, "
                                   f"eta {args.eta:g}, autoguidance {weights[0]:g}, cond-aug {noises[0]})")
        weights = []  # these rows replace the samples from pure noise
    for ag in weights:
        for ca in noises:
            runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16 if args.precision == "bf16" else torch.float32,
                                  bundle.config.guidance_per_level, ag, ca)
            sampled = sample(runner, parent, held.shape, args)
            report(held, sampled, f"{bundle.config.magnifications[0]:g}x sampled from the {args.parent} "
                                  f"{bundle.config.magnifications[1]:g}x parent "
                                  f"of the {'training part' if args.split == 'train' else 'held-out band'} "
                                  f"({args.steps} steps, eta {args.eta:g}, autoguidance {ag:g}, cond-aug {ca})")
            rows.append(sampled)
    if args.out and args.zoom:
        x0, x1, y0, y1 = (int(v) for v in args.zoom.split(","))
        Image.fromarray(np.concatenate([r[y0:y1, x0:x1] for r in rows], 1)).save(args.out, optimize=True)
        print(f"wrote {args.out}")
    elif args.out:
        img = Image.fromarray(np.concatenate(rows, 0))
        if args.crop:
            x0, x1 = (int(v) for v in args.crop.split(","))
            img = img.crop((x0, 0, min(x1, img.width), img.height))
            img = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
        img.save(args.out, optimize=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
