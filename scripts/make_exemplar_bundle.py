#!/usr/bin/env python
"""Write a copy of a model bundle whose pixel level is synthesised from an exemplar of real pixels.

BUNDLE must have a pixel level K under the latent level of its own magnification (`gigagen train --magnifications
20,5,5,1.25 --pixel-levels 1`), such as a run that trained its 20x level on real 5x pixels. The new bundle reads
level K off the latent above it by exemplar synthesis (gigagen.engine.exemplar, image quilting): patches of the
training part of REGION at level K's magnification (--patch px, default 48, sharing --overlap px, default 12), chosen
to match the autoencoder's decoding of the latent and joined along minimum-error seams. Its level decoder is that
autoencoder's decoder. The held-out band (the bundle's training record's holdout_frac) is never part of the
exemplar. Convolution and linear weights are stored in bf16 (save_bundle's `compact`): half the size,
the same pixels in the default bf16 precision.

With --coarse-of B (a bundle with B's cascade = BUNDLE's without level K, the same encoder and latent scale; the
decoders may differ, so BUNDLE's may have been fine-tuned with `gigagen train --decoder-of`),
B's denoiser samples every latent level above K, with B's sampling steps and guidance there: BUNDLE's own
denoiser may then have trained on its finest level only (--level-probs 1,0,0,0).

(runs/default-final.safetensors is the three-level bundle `scripts/train_default.sh` makes before its last stages; the
shipped default is such a bundle, made from runs/default-more.safetensors.)

    .venv/bin/python scripts/make_exemplar_bundle.py runs/pxq/bundle.safetensors --region data/cmu_small_region.svs \\
        --coarse-of runs/default-final.safetensors --out runs/pxq/exemplar.safetensors
"""

from __future__ import annotations

import argparse
import copy
import math
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.engine.exemplar import ExemplarSpec  # noqa: E402
from gigagen.engine.levels import level_zooms  # noqa: E402
from gigagen.errors import UserError, script_exit  # noqa: E402
from gigagen.models.checkpoint import BundleConfig, ExemplarPixels, ModelBundle, fresh_path, load_bundle, save_new  # noqa: E402
from gigagen.models.unet import UNet  # noqa: E402
from gigagen.train import data as D  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402
from gigagen.train.loop import level_map  # noqa: E402
from set_coarse_network import same_encoder  # noqa: E402


def pixel_level(c: BundleConfig) -> int:
    """The bundle's pixel level under a latent level of its own magnification, or a UserError."""
    ks = [k for k in c.pixel_levels if k + 1 < len(c.magnifications) and c.magnifications[k] == c.magnifications[k + 1]]
    if len(ks) != 1 or c.coarse_ae is not None:
        raise UserError("the bundle needs exactly one pixel level under the latent level of its own magnification "
                        "(gigagen train --magnifications 20,5,5,1.25 --pixel-levels 1) and one autoencoder")
    return ks[0]


def exemplar_pixels(c: BundleConfig, k: int, region: Path, mpp: float | None,
                    **quilt: int) -> tuple[ExemplarSpec, ExemplarPixels]:
    """The training part of `region` (without the bundle's held-out band) at level k's magnification, quilted with
    the ExemplarSpec fields `quilt` (patch, overlap) or their defaults."""
    frac = float(c.training.get("holdout_frac", 0.2))
    train, _ = split_reference(region, frac, mpp, c.mpp0)
    zoom = math.prod(level_zooms(tuple(c.magnifications))[:k])  # from the finest magnification to level k's
    m = zoom * c.ae.factor
    rgb = D.downsample(train[: train.shape[0] // m * m, : train.shape[1] // m * m], zoom) if zoom > 1 else train
    spec = ExemplarSpec(rgb.shape[0], rgb.shape[1], **quilt)
    module = ExemplarPixels(spec)
    module.pixels.copy_(torch.from_numpy(np.ascontiguousarray(rgb)))
    return spec, module


def coarse_network(bundle: ModelBundle, b: ModelBundle, k: int) -> tuple[dict, UNet]:
    """B's denoiser as a network of BUNDLE's cascade (its level embeddings carried by magnification, gigagen train's
    level_map) and the fields that make it sample every latent level above k."""
    c, cb = bundle.config, b.config
    mags = tuple(c.magnifications[:k] + c.magnifications[k + 1 :])
    if tuple(cb.magnifications) != mags or cb.pixel_levels or cb.coarse is not None or not same_encoder(bundle, b):
        raise UserError(f"--coarse-of needs a bundle of magnifications {list(mags)} without pixel levels or a coarse "
                        "network, with this bundle's encoder and latent scale")
    net_cfg = dataclasses.replace(cb.unet, n_levels=len(c.magnifications))
    weights = b.unet.state_dict()
    weights["level_emb.weight"] = weights["level_emb.weight"][level_map(mags, tuple(c.magnifications), (), tuple(c.pixel_levels))]
    net = UNet(net_cfg)
    net.load_state_dict(weights)
    levels = tuple(range(k + 1, len(c.magnifications)))
    old = list(range(k + 1)) + list(range(k, len(mags)))  # new level -> B's level; the pixel level takes B's level k
    steps = tuple(cb.steps[old[j]] for j in range(len(c.magnifications))) if cb.steps else ()
    guidance = tuple(cb.guidance[old[j]] for j in range(len(c.magnifications) - 1)) if cb.guidance else ()
    record = {"from": b.identity, "levels": list(levels), "network": dataclasses.asdict(net_cfg)}
    return {"coarse": net_cfg, "coarse_levels": levels, "steps": steps, "guidance": guidance,
            "training": c.training | {"coarse": record}}, net


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--region", required=True, help="the training region (the held-out band is left out)")
    p.add_argument("--mpp", type=float, default=None, help="the region's pixel size in um (default: the file's)")
    p.add_argument("--coarse-of", default=None, help="a bundle whose denoiser samples the latent levels above the pixel level")
    p.add_argument("--patch", type=int, default=ExemplarSpec.patch, help="quilt patch side in px (default %(default)s)")
    p.add_argument("--overlap", type=int, default=ExemplarSpec.overlap,
                   help="px neighbouring patches share (default %(default)s; at most half the patch)")
    p.add_argument("--name", default=None, help="the new bundle's name (default: BUNDLE's with -exemplar)")
    p.add_argument("--out", required=True, help="the new bundle (must not exist)")
    args = p.parse_args()

    def body() -> str:
        out = fresh_path(args.out)
        bundle = load_bundle(Path(args.bundle))
        c = bundle.config
        k = pixel_level(c)
        spec, pixels = exemplar_pixels(c, k, Path(args.region), args.mpp, patch=args.patch, overlap=args.overlap)
        fields: dict = {}
        nets: dict = {}
        if args.coarse_of:
            fields, nets["coarse"] = coarse_network(bundle, load_bundle(Path(args.coarse_of)), k)
        decoder = copy.deepcopy(bundle.ae.decoder)
        fields["training"] = fields.get("training", c.training) | {
            "exemplar": {"region": Path(args.region).name, "level": k, "height": spec.height, "width": spec.width}}
        cfg = dataclasses.replace(c, name=args.name or f"{c.name}-exemplar", decoded_level=k, level_decoder_noise=0,
                                  nucleus_stamps=None, exemplar=spec, **fields)
        # compact: an exemplar bundle is an end product (training runs refuse it), sampled in bf16 by default
        save_new(out, bundle, cfg, compact=True, level_decoder=decoder, exemplar=pixels, **nets)
        return f"{out}: {load_bundle(out).identity} (level {k} from a {spec.height}x{spec.width} px exemplar)"

    return script_exit("make_exemplar_bundle", body)


if __name__ == "__main__":
    sys.exit(main())
