#!/usr/bin/env python
"""Write a copy of a model bundle whose main denoiser is another run's network of the same architecture.

The network comes from a run that trained the same denoiser on the same latents: typically the run BUNDLE's denoiser
came from, continued (`gigagen train --resume`) after BUNDLE was made from one of its checkpoints, for instance after
a decoder fine-tune (`gigagen train --decoder-of`) that is kept. BUNDLE's autoencoder (its fine-tuned decoder too),
guide, coarse network, expert and sampling defaults stay as they are, bit for bit; its training record takes the
run's denoiser record (steps, minutes, held-out loss) and says where the network came from.

    .venv/bin/python scripts/set_denoiser.py runs/pxr/mix1.safetensors --from runs/pxs/bundle-best.safetensors \\
        --out runs/pxs/refined.safetensors
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

RUN_RECORD = ("unet_step", "unet_minutes", "validation", "level_probs", "denoiser_from")


def with_denoiser(bundle: ModelBundle, run: ModelBundle, run_path: Path, out: Path) -> None:
    """Save `bundle` with `run`'s main denoiser in place of its own."""
    c, r = bundle.config, run.config
    if r.unet != c.unet:
        raise UserError(f"{run_path}'s denoiser is another network (sizes, channels or levels differ from this bundle's)")
    require_same_latents(bundle, run, run_path, encoder_only=True)
    record = {k: r.training[k] for k in RUN_RECORD if k in r.training}
    cfg = dataclasses.replace(c, training=c.training | record | {"denoiser_set_from": run.identity})
    save_new(out, bundle, cfg, unet=run.unet)


def main() -> int:
    return install_main(__doc__, "the bundle of a run that trained the same denoiser on the same latents",
                        with_denoiser, lambda new, run: f"denoiser from {run.identity}")


if __name__ == "__main__":
    sys.exit(main())
