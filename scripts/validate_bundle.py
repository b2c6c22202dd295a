#!/usr/bin/env python
"""Held-out and training validation v-loss of model bundles, as `gigagen train` measures it at every checkpoint
(at a bundle's coarse levels, its coarse network's; at its expert's levels and timesteps, its expert's).

The same fixed crops, timesteps and noise (gigagen.train.loop.build_valset) for every bundle, so bundles
trained on the same region compare directly: a denoiser whose training loss falls while its held-out loss
does not is fitting the region. Each bundle encodes the region with its own autoencoder, so compare
bundles that share one (an --init-from chain does).

    .venv/bin/python scripts/validate_bundle.py BUNDLE [BUNDLE ...] [--reference data/cmu_small_region.svs] [--by-time]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.models.checkpoint import ModelBundle, load_bundle  # noqa: E402
from gigagen.train import loop as L  # noqa: E402


def bundle_losses(path: str, reference: str, holdout_frac: float) -> dict[tuple[str, int, int], float]:
    """The validation losses of one bundle's EMA denoiser on `reference` split as its training split it, per
    (split, level, timestep)."""
    bundle = load_bundle(path)
    c = bundle.config
    cfg = L.TrainConfig(inputs=[reference], out="", holdout_frac=holdout_frac, ae=c.ae, unet=c.unet,
                        magnifications=tuple(c.magnifications), mpp0=c.mpp0, tile=c.tile,
                        layout_tile=int(c.training.get("layout_tile", 16)),
                        level_probs=tuple(c.training.get("level_probs", L.default_level_probs(len(c.magnifications)))),
                        pixel_levels=tuple(c.pixel_levels), coarse_ae=c.coarse_ae)
    cpu = torch.device("cpu")
    reads = L.read_inputs(cfg)  # one read for both splits
    train = L.encode_all(L.load_training_levels(cfg, reads=reads), bundle.ae, cfg, cpu, torch.bfloat16, lambda _: None,
                         orientations=1, coarse_ae=bundle.coarse_ae).scaled(c.level_scales)
    splits = L.validation_latents(cfg, bundle.ae, c.level_scales, train, cpu, print, reads, coarse_ae=bundle.coarse_ae)
    # every level the bundle has, whatever shares it trained with
    vs = L.build_valset(splits, dataclasses.replace(cfg, level_probs=(1.0,) * len(cfg.magnifications)), cpu)
    return by_time_losses(bundle, vs)


def by_time_losses(bundle: ModelBundle, vs: L.ValSet) -> dict[tuple[str, int, int], float]:
    """(split, level, timestep) -> loss, each level and timestep on the network that samples it there (a coarse
    network's levels on that network, an expert's timesteps on the expert)."""
    losses: dict[tuple[str, int, int], float] = {}
    for (split, level), batch in vs.batches.items():
        t = batch[3]
        for time in sorted(set(t.tolist())):
            rows = t == time
            one = dataclasses.replace(vs, batches={(split, level): tuple(x[rows] for x in batch)})
            losses[(split, level, time)] = L.val_losses(bundle.denoiser(level, time), one, torch.bfloat16)[(split, level)]
    return losses


def level_means(losses: dict[tuple[str, int, int], float]) -> dict[tuple[str, int], float]:
    """The loss of each (split, level) over its timesteps (equal numbers of crops at each: build_valset)."""
    keys = {(split, level) for split, level, _ in losses}
    return {k: float(np.mean([v for (s, lv, _), v in losses.items() if (s, lv) == k])) for k in keys}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--holdout-frac", type=float, default=0.2)
    p.add_argument("--by-time", action="store_true", help="also print the 20x losses at each validation timestep")
    args = p.parse_args()
    torch.manual_seed(0)
    timed = [(b, bundle_losses(b, args.reference, args.holdout_frac)) for b in args.bundles]
    rows = [(b, level_means(losses)) for b, losses in timed]
    keys = sorted({k for _, losses in rows for k in losses}, key=lambda k: (k[1], k[0] != "held"))
    print("validation v-loss (EMA denoiser, fixed crops / timesteps / noise; lower is better)")
    print(f"{'bundle':<48}" + "".join(f"{split + ' L' + str(lv):>12}" for split, lv in keys) + f"{'gap L0':>9}")
    for b, losses in rows:
        gap = losses.get(("held", 0), float("nan")) / losses.get(("train", 0), float("nan"))
        print(f"{b[-48:]:<48}" + "".join(f"{losses.get(k, float('nan')):>12.4f}" for k in keys) + f"{gap:>9.2f}")
    print("L0 = 20x, L1 = 5x, ...; gap = held-out / training loss at 20x (crops of one side for both splits)")
    if args.by_time:
        cols = sorted({(split, t) for _, losses in timed for split, lv, t in losses if lv == 0}, key=lambda k: (k[0] != "held", k[1]))
        print("20x v-loss at each validation timestep")
        print(f"{'bundle':<48}" + "".join(f"{split + ' t' + str(t):>12}" for split, t in cols))
        for b, losses in timed:
            print(f"{b[-48:]:<48}" + "".join(f"{losses.get((split, 0, t), float('nan')):>12.4f}" for split, t in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
