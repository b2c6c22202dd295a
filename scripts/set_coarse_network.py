#!/usr/bin/env python
"""Write a copy of a model bundle whose coarser levels are sampled by a second, separately trained denoiser.

The network comes from a `gigagen train --guide-of BUNDLE --level-probs 0,P,Q ...` run: such a run trains a
denoiser of its own size (--unet-*, e.g. --unet-no-attn) on BUNDLE's latents at the levels --level-probs
gives, and exports it as BUNDLE's guide. This script takes that network from the run's bundle and installs it
as BUNDLE's *coarse* network (BundleConfig.coarse) for the same levels, where it replaces the main denoiser;
BUNDLE's own guide, autoguidance weight, weights and sampling defaults stay as they are, bit for bit.

    .venv/bin/python scripts/set_coarse_network.py BUNDLE --from runs/cn/bundle.safetensors --out NEW.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.errors import UserError, script_exit  # noqa: E402
from gigagen.models.checkpoint import ModelBundle, fresh_path, load_bundle, save_new  # noqa: E402


def same_autoencoder(a: ModelBundle, b: ModelBundle) -> bool:
    """Both bundles encode and decode the same latents: equal autoencoder weights and latent scale."""
    return _same_weights(a.ae, b.ae) and a.config.latent_scale == b.config.latent_scale


def same_encoder(a: ModelBundle, b: ModelBundle) -> bool:
    """Both bundles' latents live in one space: equal encoder weights and latent scale (their decoders may differ,
    as after a decoder fine-tune, which keeps the encoder bit for bit)."""
    return _same_weights(a.ae.encoder, b.ae.encoder) and a.config.latent_scale == b.config.latent_scale


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(_same_tensor(sa[k], sb[k]) for k in sa)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, or one of them stored compact (save_bundle's `compact`: rounded to bf16) and the other rounding to it:
    the shipped default is compact, the runs trained from the same weights are not."""
    if torch.equal(a, b):
        return True
    if a.shape != b.shape or not a.is_floating_point():
        return False
    rounded = lambda t: t.to(torch.bfloat16).to(t.dtype)  # noqa: E731
    return any(torch.equal(x, rounded(x)) and torch.equal(x, rounded(y)) for x, y in ((a, b), (b, a)))


def require_same_latents(bundle: ModelBundle, run: ModelBundle, run_path: Path, *, encoder_only: bool = False) -> None:
    """A UserError unless `run` was trained on `bundle`'s latents: the same cascade and pixel levels, and the same
    autoencoder (with `encoder_only`, encoder: a decoder fine-tune keeps the latents) and latent scale."""
    same, part = (same_encoder, "encoder") if encoder_only else (same_autoencoder, "autoencoder")
    c, r = bundle.config, run.config
    if tuple(r.magnifications) != tuple(c.magnifications) or r.pixel_levels != c.pixel_levels or not same(bundle, run):
        raise UserError(f"{run_path} was not trained on this bundle's latents ({part}, latent scale or cascade differ)")


def with_coarse(bundle: ModelBundle, run: ModelBundle, run_path: Path, out: Path) -> None:
    """Save `bundle` with `run`'s guide network as its coarse network, at the levels that network learned."""
    c, r = bundle.config, run.config
    if run.guide is None or r.guide is None:
        raise UserError(f"{run_path} has no guide network: train one with gigagen train --guide-of BUNDLE --level-probs 0,P,Q")
    if 0 in r.guide_levels:
        raise UserError(f"{run_path}'s network learned the finest level too (levels {list(r.guide_levels)}); "
                        "a coarse network samples coarser levels only (--level-probs 0,P,Q)")
    require_same_latents(bundle, run, run_path)
    record = {"from": run.identity, "levels": list(r.guide_levels), "network": dataclasses.asdict(r.guide),
              "training": r.training.get("guide", {})}
    cfg = dataclasses.replace(c, coarse=r.guide, coarse_levels=tuple(r.guide_levels), training=c.training | {"coarse": record})
    save_new(out, bundle, cfg, coarse=run.guide)


def install_main(doc: str, from_help: str, put: Callable[[ModelBundle, ModelBundle, Path, Path], None],
                 describe: Callable[[ModelBundle, ModelBundle], str]) -> int:
    """The command line of a script that writes BUNDLE with a network taken from a training run's bundle, as
    put(bundle, run, run path, out) does: never over an existing file; a refusal is one line and exit code 2."""
    prog = Path(sys.argv[0]).stem
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--from", dest="run", required=True, help=from_help)
    p.add_argument("--out", required=True, help="the new bundle (must not exist)")
    args = p.parse_args()

    def body() -> str:
        out = fresh_path(args.out)
        bundle, run = load_bundle(Path(args.bundle)), load_bundle(Path(args.run))
        put(bundle, run, Path(args.run), out)
        new = load_bundle(out)
        return f"{out}: {new.identity} ({describe(new, run)})"

    return script_exit(prog, body)


def main() -> int:
    return install_main(__doc__, "the bundle of a gigagen train --guide-of BUNDLE run", with_coarse,
                        lambda new, run: f"coarse network for levels {list(new.config.coarse_levels)} from {run.identity}")


if __name__ == "__main__":
    sys.exit(main())
