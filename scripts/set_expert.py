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

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from set_coarse_network import install_main, require_same_latents  # noqa: E402

from gigagen.errors import UserError  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, save_new  # noqa: E402

RUN_RECORD = ("unet_step", "unet_minutes", "level_probs", "validation", "denoiser_from", "unet_dropout", "scale_aug",
              "elastic_aug", "elastic_strain")


def with_expert(bundle: ModelBundle, run: ModelBundle, run_path: Path, out: Path) -> None:
    """Save `bundle` with `run`'s denoiser as its expert from the first timestep that run learned, at its levels."""
    c, r = bundle.config, run.config
    lo, hi = r.training.get("t_range", (0, c.n_train_steps))
    if not 0 < lo or hi != c.n_train_steps:
        raise UserError(f"{run_path} learned timesteps {lo}..{hi - 1}; an expert learns the high-noise end alone "
                        f"(gigagen train --init-from BUNDLE --t-range LO,{c.n_train_steps})")
    require_same_latents(bundle, run, run_path)
    shares = r.training.get("level_probs", ())
    levels = tuple(i for i, share in enumerate(shares) if share > 0)
    record = {"from": run.identity, "t_range": [lo, hi], "levels": list(levels),
              "training": {k: r.training[k] for k in RUN_RECORD if k in r.training}}
    cfg = dataclasses.replace(c, expert=r.unet, expert_levels=levels, expert_from=lo, training=c.training | {"expert": record})
    save_new(out, bundle, cfg, expert=run.unet)


def main() -> int:
    return install_main(__doc__, "the bundle of a gigagen train --init-from BUNDLE --t-range LO,1000 run", with_expert,
                        lambda new, run: f"expert for levels {list(new.config.expert_levels)} from timestep "
                                         f"{new.config.expert_from}, from {run.identity}")


if __name__ == "__main__":
    sys.exit(main())
