#!/usr/bin/env python
"""Decoder fine-tune (`gigagen train --decoder-of`): how far to mix the fine-tuned decoder in.

For each mix m, the decoder (1 - m) original + m fine-tuned (the run's EMA weights) decodes
- the 20x level of the held-out band sampled from pure noise given its real 5x parent, as
  `scripts/sample_real_parent.py` samples it (same seed, one sampling for every m): FD randconv against the
  real band at its tissue positions ("paired") and high-frequency energy;
- the real 20x latent of the held-out band: reconstruction PSNR at the same positions.

    .venv/bin/python scripts/bench_decoder_mix.py --run runs/gan-default [--original BUNDLE] [--mixes 0,0.5,1] [--seed 1]
        [--out PNG --zoom X0,X1,Y0,Y1]   # that window of the real band and of each mix's decode, side by side

--original is the bundle the run fine-tuned (default: the run's --decoder-of, checked by identity).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.decode import to_uint8  # noqa: E402
from gigagen.models.checkpoint import load_bundle  # noqa: E402
from gigagen.models.denoiser import BundleRunner  # noqa: E402
from gigagen.train import metrics as M  # noqa: E402
from gigagen.train.gan_decoder import mixed_autoencoder, sample_finest, start_decoder  # noqa: E402
from gigagen.train.loop import encode_image  # noqa: E402
from sample_real_parent import held_band  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory of a gigagen train --decoder-of run (its state.pt)")
    p.add_argument("--original", default=None, help="the bundle that run fine-tuned (default: its --decoder-of)")
    p.add_argument("--mixes", default="0,0.35,0.5,0.65,0.8,1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--out", default=None, help="PNG: the --zoom window of the real band and of each mix's decoded sample")
    p.add_argument("--zoom", default="0,768,0,512", help="X0,X1,Y0,Y1 of that window in band pixels (default 0,768,0,512)")
    args = p.parse_args()
    blob = torch.load(Path(args.run) / "state.pt", map_location="cpu", weights_only=False)
    bundle = load_bundle(args.original or blob["decoder_of"])
    if blob.get("identity") and blob["identity"] != bundle.identity:
        print(f"bench_decoder_mix: the run fine-tuned {blob['identity']}, not {bundle.identity}; pass --original", file=sys.stderr)
        return 2
    c, cpu = bundle.config, torch.device("cpu")
    held, parent = held_band(bundle, args.reference)  # the band and parent sample_real_parent.py samples
    held = np.ascontiguousarray(held)
    real = encode_image(bundle.ae, held, cpu, torch.bfloat16) * c.latent_scale
    sampled = sample_finest(BundleRunner(bundle, cpu, torch.bfloat16, c.guidance_per_level, c.autoguidance), parent, real.shape[1:], args.seed)
    real_tiles, pos = M.grid_tiles(held, 256, 128, 0.5)
    real_feats = M.random_conv_features(real_tiles)
    original = start_decoder(bundle, blob.get("refine_ch", 0))  # grown by the run's refiner, if it had one
    if "original" in blob:
        original.load_state_dict(blob["original"])
    tuned = copy.deepcopy(original)
    tuned.load_state_dict(blob["decoder_ema"])
    print(f"decoder fine-tune {args.run}: {blob['step']} steps; real-parent sample seed {args.seed}, {len(pos)} held-out tissue tiles")
    real_nuc = M.nuclei(real_tiles)
    print(f"| mix | paired FD randconv | HF energy (real {M.high_freq_energy(real_tiles).mean():.4f}) | nuclei/mm2 (real "
          f"{real_nuc.density_per_mm2:.0f}) | nucleus area median um2 (real {np.median(real_nuc.areas_um2):.1f}) | reconstruction PSNR dB |")
    print("|---|---|---|---|---|---|")
    x0, x1, y0, y1 = (int(v) for v in args.zoom.split(","))
    windows = [held[y0:y1, x0:x1]]
    for mix in (float(v) for v in args.mixes.split(",")):
        b = copy.copy(bundle)
        b.ae = mixed_autoencoder(bundle, original, tuned, mix)
        runner = BundleRunner(b, cpu, torch.bfloat16, c.guidance_per_level, c.autoguidance)
        gen = to_uint8(runner.decode_fn(sampled[None])[0].transpose(1, 2, 0))
        rec = to_uint8(runner.decode_fn(real[None])[0].transpose(1, 2, 0))
        gen_t = np.stack([gen[y : y + 256, x : x + 256] for y, x in pos])
        rec_t = np.stack([rec[y : y + 256, x : x + 256] for y, x in pos])
        fd = M.frechet_distance(M.random_conv_features(gen_t), real_feats)
        psnr = 10 * np.log10(255.0**2 / ((rec_t.astype(np.float32) - real_tiles) ** 2).mean())
        nuc = M.nuclei(gen_t)
        area = np.median(nuc.areas_um2) if len(nuc.areas_um2) else float("nan")
        print(f"| {mix:g} | {fd:.4f} | {M.high_freq_energy(gen_t).mean():.4f} | {nuc.density_per_mm2:.0f} | {area:.1f} | {psnr:.2f} |", flush=True)
        windows.append(gen[y0:y1, x0:x1])
    if args.out:
        from PIL import Image

        Image.fromarray(np.concatenate(windows, 1)).save(args.out, optimize=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
