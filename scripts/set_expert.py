#!/usr/bin/env python
"""Write a copy of a model bundle whose high-noise denoising steps are taken by an expert network.

The expert comes from a `gigagen train --init-from BUNDLE --t-range LO,1000 ...` run: that run trains a copy of
BUNDLE's denoiser on timesteps LO..999 only (the high-noise part of the schedule, where a small network has to
decide where nuclei and fibres go). This script puts the run's denoiser beside BUNDLE's as its *expert*
(BundleConfig.expert, eDiff-I's expert denoisers): at the levels the run trained, steps at timesteps >= LO use the
expert and the rest BUNDLE's own denoiser, so a step still costs one network pass. BUNDLE's weights, guide and
sampling defaults stay as they are, bit for bit.

    .venv/bin/python scripts/set_expert.py BUNDLE --from runs/hx/bundle.safetensors --out NEW.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from set_coarse_network import same_autoencoder  # noqa: E402

from gigagen.errors import UserError  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, load_bundle, save_bundle  # noqa: E402

RUN_RECORD = ("unet_step", "unet_minutes", "level_probs", "validation", "denoiser_from", "unet_dropout", "scale_aug",
              "elastic_aug", "elastic_strain")


def with_expert(bundle: ModelBundle, run: ModelBundle, run_path: Path, out: Path) -> None:
    """Save `bundle` with `run`'s denoiser as its expert from the first timestep that run learned, at its levels."""
    c, r = bundle.config, run.config
    lo, hi = r.training.get("t_range", (0, c.n_train_steps))
    if not 0 < lo or hi != c.n_train_steps:
        raise UserError(f"{run_path} learned timesteps {lo}..{hi - 1}; an expert learns the high-noise end alone "
                        f"(gigagen train --init-from BUNDLE --t-range LO,{c.n_train_steps})")
    if tuple(r.magnifications) != tuple(c.magnifications) or r.pixel_levels != c.pixel_levels or not same_autoencoder(bundle, run):
        raise UserError(f"{run_path} was not trained on this bundle's latents (autoencoder, latent scale or cascade differ)")
    shares = r.training.get("level_probs", ())
    levels = tuple(i for i, share in enumerate(shares) if share > 0)
    record = {"from": run.identity, "t_range": [lo, hi], "levels": list(levels),
              "training": {k: r.training[k] for k in RUN_RECORD if k in r.training}}
    cfg = dataclasses.replace(c, expert=r.unet, expert_levels=levels, expert_from=lo, training=c.training | {"expert": record})
    try:
        save_bundle(out, cfg, bundle.ae, bundle.unet, bundle.guide, bundle.level_decoder, bundle.coarse, run.unet)
    except ValueError as exc:  # validate_config: levels the coarse network samples, a network the tiling cannot run
        raise UserError(f"refused: {exc}") from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--from", dest="run", required=True, help="the bundle of a gigagen train --init-from BUNDLE --t-range LO,1000 run")
    p.add_argument("--out", required=True, help="the new bundle (must not exist)")
    args = p.parse_args()
    try:
        out = Path(args.out)
        if out.exists():
            raise UserError(f"{out} exists; choose a new --out (the original is never overwritten)")
        bundle, run = load_bundle(Path(args.bundle)), load_bundle(Path(args.run))
        with_expert(bundle, run, Path(args.run), out)
    except UserError as exc:
        print(f"set_expert: {exc}", file=sys.stderr)
        return 2
    new = load_bundle(out)
    print(f"{out}: {new.identity} (expert for levels {list(new.config.expert_levels)} from timestep "
          f"{new.config.expert_from}, from {run.identity})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
