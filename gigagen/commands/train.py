"""`gigagen train`: train the autoencoder and the cascade denoiser on slides or images."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from gigagen.config import comma_floats, comma_ints
from gigagen.errors import UserError


def _levels(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() == "none" else comma_ints(text)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model bundle on H&E slides or images", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="slides or images (OpenSlide formats, TIFF, PNG, JPEG)")
    p.add_argument("--out", default="runs/train", help="run directory: state.pt, bundle.safetensors, loss.csv/png (default runs/train)")
    p.add_argument("--mpp", type=float, default=None, help="micrometres per pixel of the inputs when the files lack it")
    p.add_argument("--name", default="gigagen-model", help="model name recorded in the bundle")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall-time limit of this run (default 60)")
    p.add_argument("--ae-minutes", type=float, default=32.0, help="autoencoder training time before the denoiser starts (default 32)")
    p.add_argument("--holdout-frac", type=float, default=0.2, help="bottom band of each input held out, never trained on (default 0.2)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-autoencoder", metavar="BUNDLE", default=None,
                   help="reuse this bundle's autoencoder (its configuration replaces --ae-* and --latent-ch); train only the denoiser")
    p.add_argument("--init-from", metavar="BUNDLE", default=None,
                   help="continue training this bundle's denoiser (fine-tune; its autoencoder and model configuration are kept, "
                        "and so is its autoguidance network unless --magnifications changes the cascade)")
    p.add_argument("--coarse-from", metavar="BUNDLE", default=None,
                   help="train only the finest level's denoiser, in this run's own autoencoder's latent (new, or "
                        "--init-autoencoder's, e.g. f4: --ae-mult 1,2,4 --latent-ch 4), on parents in BUNDLE's latent; the "
                        "run's bundle samples every coarser level with BUNDLE's autoencoder and denoiser, as BUNDLE does "
                        "(give it again with --resume)")
    p.add_argument("--distill", action="store_true",
                   help="with --init-from B: the denoiser learns to give in one pass what B gives with its default guidance "
                        "(classifier-free and autoguidance; Meng et al. 2023), so the run's bundle samples with one network "
                        "pass per tile and no guide; the run's loss and validation measure the match to B (--resume finds B again)")
    p.add_argument("--guide-of", metavar="BUNDLE", default=None,
                   help="train a small guide denoiser for this bundle (autoguidance; size it with --unet-*) on its autoencoder, "
                        "cascade and tile; the run's bundle is that bundle plus the guide, which guides the levels it "
                        "trained on (--level-probs; default the finest level only)")
    p.add_argument("--autoguidance", type=float, default=1.5,
                   help="with --guide-of: the autoguidance weight the bundle records as its default (default 1.5)")
    p.add_argument("--decoder-of", metavar="BUNDLE", default=None,
                   help="fine-tune this bundle's decoder adversarially on latents its own denoiser samples (PatchGAN); "
                        "the run's bundle is that bundle with the new decoder (--ae-batch and --ae-crop size the crops)")
    p.add_argument("--gan-adv", type=float, default=0.2, help="with --decoder-of: weight of the adversarial loss (default 0.2)")
    p.add_argument("--gan-anchor-px", type=int, default=16,
                   help="with --decoder-of: decoded samples keep the original decoder's means over blocks of this many px (default 16)")
    p.add_argument("--gan-bank-seeds", type=int, default=2,
                   help="with --decoder-of: sampled latents per training image and orientation (default 2)")
    p.add_argument("--gan-paired", type=comma_ints, default=(), metavar="T0,...",
                   help="with --decoder-of: the bank also holds, per training image, orientation and timestep T0, the "
                        "real latent noised to T0 and denoised (SDEdit), which keeps the image's layout; the decoder learns "
                        "to reconstruct the real pixels from those too, so it draws crisp tissue from the denoiser's "
                        "degraded latents (default none)")
    p.add_argument("--gan-max-steps", type=int, default=None, help="with --decoder-of: stop after this many steps in all")
    p.add_argument("--gan-mix", type=float, default=0.5,
                   help="with --decoder-of: the exported decoder is (1 - M) original + M fine-tuned, weight by weight "
                        "(1 = the fine-tuned decoder; resume at the step limit to re-export with another M) (default 0.5)")
    p.add_argument("--decoder-refine", type=int, default=0, metavar="W",
                   help="with --decoder-of: first grow the decoder by a full-resolution residual refiner of W channels "
                        "(two PixelNorm ResBlocks; its output starts at zero), trained with the rest (default 0: keep the "
                        "decoder's architecture)")
    p.add_argument("--decoder-level", type=int, default=None, metavar="K",
                   help="with --decoder-of: tune a second decoder (the level decoder, from the autoencoder's) that draws "
                        "pixel level K from the latent level K + 1 of its own magnification (e.g. 1 for --magnifications "
                        "20,5,5,1.25 --pixel-levels 1); the run's bundle then reads level K off that latent instead of "
                        "sampling it (default: tune the autoencoder's decoder)")
    p.add_argument("--decoder-noise", type=int, default=0, metavar="N",
                   help="with --decoder-level: the level decoder also reads N standard normal channels per latent pixel (in "
                        "a slide a function of its seed, level and position) and learns, as a conditional VAE-GAN, to draw "
                        "from them the detail its latent leaves open (default 0: deterministic)")
    p.add_argument("--decoder-kl", type=float, default=0.05,
                   help="with --decoder-noise: weight of the KL term that keeps the noise the decoder learns from close to "
                        "the standard normal it samples with (default 0.05)")
    p.add_argument("--ae-base", type=int, default=16, help="autoencoder base width (default 16)")
    p.add_argument("--ae-mult", type=comma_ints, default=(1, 2, 4, 8), help="autoencoder width multipliers; factor = 2^(n-1) (default 1,2,4,8 = f8)")
    p.add_argument("--latent-ch", type=int, default=12, help="latent channels (default 12)")
    p.add_argument("--unet-base", type=int, default=64, help="UNet base width (default 64)")
    p.add_argument("--unet-mult", type=comma_ints, default=(1, 2, 2), help="UNet width multipliers (default 1,2,2)")
    p.add_argument("--unet-blocks", type=int, default=1, help="UNet residual blocks per resolution (default 1)")
    p.add_argument("--unet-no-attn", action="store_true",
                   help="no self-attention at the UNet's lowest resolution: a receptive field of a few dozen latent "
                        "px instead of the whole tile (single-image diffusion, SinDiffusion: a limited field learns "
                        "the image's structures rather than the image)")
    p.add_argument("--unet-head-blocks", type=int, default=None, metavar="N",
                   help="extra UNet residual blocks at full resolution before the output; with --init-from, grows the "
                        "bundle's denoiser by them (they start as the identity) (default 0, or the bundle's)")
    p.add_argument("--unet-dropout", type=float, default=0.0,
                   help="dropout in the denoiser's residual blocks while it trains, against fitting a small training set "
                        "(inference never drops; with --init-from the rate may differ from the bundle's) (default 0)")
    p.add_argument("--scale-aug", type=comma_floats, default=(),
                   help="also train the denoiser on the inputs resampled by these factors, e.g. 0.87,1.15 "
                        "(tissue drawn 13%% smaller and 15%% larger, as scanners' pixel sizes differ) (default none)")
    p.add_argument("--level-blur", type=comma_floats, default=None, metavar="S[,S...]",
                   help="Gaussian smoothing of the real image before it is encoded at each level: sigma in pixels at that "
                        "level's magnification, finest first, 0 at the finest, e.g. 0,1.5,0: the 5x level keeps its "
                        "structure but not its nuclei, so the 20x level learns to draw its own; recorded in the bundle "
                        "(default: the --init-from bundle's, else none; a --guide-of or --decoder-of run keeps its bundle's)")
    p.add_argument("--elastic-aug", type=int, default=0, metavar="N",
                   help="also train the denoiser on N smooth elastic deformations of each input's training part "
                        "(fibres and outlines bent, local strain about 10%%; 8 orientations each) (default 0)")
    p.add_argument("--elastic-strain", type=float, default=None, metavar="S",
                   help="strength of those deformations: control points 64 and 256 px apart move by S times their spacing "
                        "(std); 0.05 gives displacements of about 11 px and local strain about 10%% (default 0.05)")
    p.add_argument("--coarse-warps", type=int, default=0, metavar="N",
                   help="also train the levels above the finest on N elastic deformations of each input's training part "
                        "at 4x the spacings of --elastic-aug (control points 256 and 1024 px apart): at 5x they bend "
                        "structures as --elastic-aug does at 20x, new arrangements for the levels with least data; the "
                        "finest level never sees them (8 orientations each) (default 0)")
    p.add_argument("--coarse-warp-strain", type=float, default=None, metavar="S",
                   help="strength of the coarse warps, as --elastic-strain (default 0.05)")
    p.add_argument("--sample-tile", type=int, default=None, metavar="N",
                   help="latent tile side `gigagen slide` samples this model with by default, recorded in the bundle "
                        "(default: the --init-from or --guide-of bundle's, else the training tile --tile)")
    p.add_argument("--cond-aug-max", type=int, default=0, metavar="T",
                   help="conditioning augmentation: the denoiser learns from parent levels noised to a timestep drawn from "
                        "0..T of the 1000-step schedule, and is told it, so that at sampling it can take a generated parent's "
                        "errors for noise (Ho et al. 2022) (default 0: off)")
    p.add_argument("--sampled-parents", type=comma_ints, default=(), metavar="T0[,T0...]",
                   help="the finest level also learns from 5x parents the --init-from bundle samples itself, paired with the "
                        "real 20x crops: per training variant and T0, its 1.25x layout is noised to T0 and redrawn (SDEdit), and "
                        "the 5x level sampled from noise given it, as gigagen slide does; to draw real-looking tissue from a "
                        "parent that looks generated; --sampled-parents-from parent redraws the 5x level instead (default: off)")
    p.add_argument("--sampled-parent-prob", type=float, default=0.5, metavar="P",
                   help="with --sampled-parents: the share of finest-level crops given a sampled parent (default 0.5)")
    p.add_argument("--sampled-parents-from", choices=("layout", "parent"), default="layout",
                   help="with --sampled-parents: what is noised to T0 and redrawn, the 1.25x layout (the 5x level is then "
                        "sampled from noise) or the 5x level itself given the real layout, so the pair keeps the real "
                        "tissue's places and differs in the generated texture (default: layout)")
    p.add_argument("--cond-aug", type=int, default=None, metavar="T",
                   help="the parent noise timestep `gigagen slide` uses by default with this model, recorded in the bundle "
                        "(default: the --init-from or --guide-of bundle's, else 0)")
    p.add_argument("--guidance", type=comma_floats, default=None, metavar="W[,W...]",
                   help="classifier-free guidance weights `gigagen slide` uses by default with this model, one per refinement "
                        "level finest first (or one for all), recorded in the bundle (default: the --init-from or --guide-of "
                        "bundle's, else 1)")
    p.add_argument("--pixel-levels", type=_levels, default=None, metavar="K[,K...]",
                   help="cascade levels the denoiser learns and samples as pixels folded into cells (3 c^2 = latent channels: "
                        "2 px cells for 12) instead of latents; intermediate levels only, e.g. 1 = 5x, whose pixels show the 20x "
                        "level where nuclei are (a 5x latent does not; scripts/cond_information.py). 'none' for none "
                        "(default: none, or the --init-from bundle's)")
    p.add_argument("--decoded-parents", action="store_true",
                   help="with --init-from a bundle that reads a level with a level decoder (--decoder-level): learn the "
                        "level below it from the level decoder's reading of the real latent above, as gigagen slide "
                        "gives it, instead of from the real pixels; the bundle keeps its level decoder (that level's "
                        "--level-probs share must be 0: it is read, not sampled)")
    p.add_argument("--nucleus-stamps", action="store_true",
                   help="with --decoded-parents: the level decoder's reading carries a small black disc at each real "
                        "nucleus centre (found at the finest level), and gigagen slide paints them at centres it samples "
                        "(a hard-core point process whose density is fitted to the training image): the level below then "
                        "learns where to draw nuclei from the stamps, which the latent above cannot tell it")
    p.add_argument("--input-perturbation", type=float, default=0.0, metavar="G",
                   help="the denoiser learns from inputs with (1 + G^2) times the noise variance, its target from the "
                        "noise without the extra part (Ning et al. 2023): against exposure bias, a sampler drifting on its "
                        "own trajectory; 0.1 in the paper (default 0: off)")
    p.add_argument("--t-range", type=comma_ints, default=(0, 1000), metavar="LO,HI",
                   help="the denoiser learns only timesteps LO..HI-1 of the 1000 (and is validated only at the validation "
                        "timesteps among them): with --init-from, a copy that specialises in part of the noise schedule, "
                        "e.g. 400,1000 for the high-noise half, where the layout of nuclei and fibres is decided "
                        "(scripts/set_expert.py puts it beside the bundle's denoiser; default: 0,1000, all)")
    p.add_argument("--early-stop", type=int, default=0, metavar="N",
                   help="stop the denoiser after N validations in a row (one per checkpoint) without a lower held-out "
                        "loss; the best is always kept as bundle-best.safetensors (default 0: never stop early)")
    p.add_argument("--ae-batch", type=int, default=8)
    p.add_argument("--ae-crop", type=int, default=128)
    p.add_argument("--unet-batch", type=int, default=16)
    p.add_argument("--tile", type=int, default=32, help="latent tile side at the refinement levels (default 32)")
    p.add_argument("--layout-tile", type=int, default=None,
                   help="latent tile side at the layout level (default 16; with --init-from the bundle's unless given, "
                        "e.g. to cover as many layout pixels after a smaller autoencoder factor; --guide-of and --decoder-of "
                        "keep the bundle's)")
    p.add_argument("--unet-lr", type=float, default=4e-4, help="denoiser learning rate, after a linear warm-up (default 4e-4)")
    p.add_argument("--lr-decay-minutes", type=float, default=0.0,
                   help="over the last M minutes of --max-minutes the denoiser LR falls linearly to 10%% (default 0: constant)")
    p.add_argument("--magnifications", type=comma_floats, default=None,
                   help="cascade levels, finest first, falling by whole factors; the last is the layout "
                        "(default 20,5,1.25, or the --init-from bundle's). A magnification may repeat once as pixels "
                        "under its latent: 20,5,5,1.25 with --pixel-levels 1 samples the 5x latent, then the 5x pixels from it")
    p.add_argument("--level-probs", type=comma_floats, default=None,
                   help="share of training crops per level, finest first (default 0.5,0.3,0.2 for three levels; "
                        "otherwise 0.4 for the finest and the rest shared equally)")
    p.add_argument("--decoder-every", type=int, default=4,
                   help="one decoder-only step every N denoiser steps; 0 = off (default 4)")
    p.add_argument("--unet-max-steps", type=int, default=None,
                   help="stop the denoiser after this many steps in all (counting resumed ones), even before --max-minutes")
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="autoencoder training autocast: bf16 or fp32; never fp16 (default bf16)")
    p.add_argument("--unet-precision", default="bf16", choices=("bf16", "fp32"), help="denoiser training autocast (default bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> Any:
    from gigagen.models.unet import UNetConfig
    from gigagen.models.vae import AutoencoderConfig
    from gigagen.train.loop import VAL_TIMES, TrainConfig, val_times

    for name in ("max_minutes", "ae_minutes"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if args.tile < 1 or (args.layout_tile is not None and args.layout_tile < 1):
        raise UserError("--tile and --layout-tile must be >= 1")
    if not 0.0 <= args.holdout_frac < 1.0:
        raise UserError("--holdout-frac must be in [0, 1)")
    if args.mpp is not None and args.mpp <= 0:
        raise UserError("--mpp must be positive")
    if args.unet_max_steps is not None and args.unet_max_steps < 1:
        raise UserError("--unet-max-steps must be >= 1")
    if args.unet_lr <= 0 or args.decoder_every < 0 or args.lr_decay_minutes < 0:
        raise UserError("--unet-lr must be positive, --decoder-every and --lr-decay-minutes >= 0")
    if not 0.0 <= args.unet_dropout < 1.0 or args.early_stop < 0:
        raise UserError("--unet-dropout must be in [0, 1) and --early-stop >= 0")
    if args.unet_head_blocks is not None and not 0 <= args.unet_head_blocks <= 8:
        raise UserError("--unet-head-blocks must be between 0 and 8")
    if not 0 <= args.elastic_aug <= 64:
        raise UserError("--elastic-aug must be between 0 and 64 deformed copies")
    if args.elastic_strain is not None and not 0.0 < args.elastic_strain <= 0.2:
        raise UserError("--elastic-strain must be in (0, 0.2]: stronger deformations fold the tissue over itself")
    if not 0 <= args.coarse_warps <= 64:
        raise UserError("--coarse-warps must be between 0 and 64 deformed copies")
    if args.coarse_warp_strain is not None and not 0.0 < args.coarse_warp_strain <= 0.2:
        raise UserError("--coarse-warp-strain must be in (0, 0.2]: stronger deformations fold the tissue over itself")
    if not 0.0 <= args.input_perturbation <= 1.0:
        raise UserError("--input-perturbation must be in [0, 1] (0.1 in Ning et al. 2023)")
    if len(args.t_range) != 2 or not 0 <= args.t_range[0] < args.t_range[1] <= 1000 or not val_times(tuple(args.t_range)):
        raise UserError(f"--t-range takes LO,HI with 0 <= LO < HI <= 1000, holding one of the validation timesteps "
                        f"{','.join(map(str, VAL_TIMES))}")
    if not 0 <= args.cond_aug_max < 1000 or (args.cond_aug is not None and not 0 <= args.cond_aug < 1000):
        raise UserError("--cond-aug-max and --cond-aug must be timesteps in [0, 1000)")
    if any(not 0.5 <= s <= 2.0 or s == 1.0 for s in args.scale_aug):
        raise UserError("--scale-aug factors must lie in [0.5, 2] and differ from 1 (scale 1 is always trained)")
    if args.decoded_parents and (args.decoder_of or args.guide_of or not (args.init_from or args.resume)):
        raise UserError("--decoded-parents continues an --init-from bundle that has a level decoder (or --resume such a run)")
    if args.sampled_parents and (args.decoder_of or args.guide_of or not args.init_from):
        raise UserError("--sampled-parents samples the 5x parents with the bundle the run continues: give --init-from B "
                        "(and no --guide-of / --decoder-of)")
    if args.sampled_parents and (min(args.sampled_parents) < 1 or max(args.sampled_parents) >= 1000):
        raise UserError("--sampled-parents takes timesteps in [1, 1000)")
    if args.coarse_warps and args.decoder_of:
        raise UserError("--coarse-warps trains the cascade's coarser levels; a --decoder-of run trains none")
    if not 0.0 < args.sampled_parent_prob <= 1.0:
        raise UserError("--sampled-parent-prob must be in (0, 1]")
    if args.sampled_parents_from != "layout" and not args.sampled_parents:
        raise UserError("--sampled-parents-from says what --sampled-parents redraws: give --sampled-parents T0")
    if args.distill and (not args.init_from or args.guide_of or args.decoder_of):
        raise UserError("--distill learns a bundle's guided sampling: give --init-from B (and no --guide-of / --decoder-of)")
    if args.distill and (args.guidance is not None or args.cond_aug_max or args.decoded_parents or args.sampled_parents
                         or args.level_blur is not None):
        raise UserError("--distill: the student samples as its teacher does, in one pass; --guidance, --cond-aug-max, "
                        "--decoded-parents, --sampled-parents and --level-blur do not apply")
    if args.nucleus_stamps and not args.decoded_parents:
        raise UserError("--nucleus-stamps paints into the level decoder's reading: give --decoded-parents too")
    if (args.decoder_refine or args.decoder_level is not None) and not args.decoder_of:
        raise UserError("--decoder-refine and --decoder-level tune the decoder of a --decoder-of run; give it the bundle to fine-tune")
    if args.decoder_noise and args.decoder_level is None:
        raise UserError("--decoder-noise feeds noise to a level decoder: give --decoder-of B --decoder-level K too")
    ae = AutoencoderConfig(base_ch=args.ae_base, ch_mult=args.ae_mult, latent_ch=args.latent_ch)
    if args.level_blur is not None and (args.guide_of or args.decoder_of):
        raise UserError("--level-blur: a --guide-of or --decoder-of run learns its bundle's levels as that bundle smooths them")
    if args.decoder_of:
        if args.sample_tile is not None or args.cond_aug is not None or args.cond_aug_max or args.guidance is not None:
            raise UserError("--sample-tile, --cond-aug, --cond-aug-max, --guidance: a --decoder-of run keeps its bundle's sampling "
                            "(its bank is sampled with it); set them on the denoiser or guide run")
        return _decoder_config(args)
    if args.guide_of:
        return _guide_config(args)
    if args.coarse_from:
        return _coarse_from_config(args, ae)
    if args.init_from:
        return _config_from_bundle(args)
    args.magnifications = _magnifications(args.magnifications or TrainConfig.magnifications)
    args.layout_tile = args.layout_tile or TrainConfig.layout_tile
    if args.init_autoencoder:
        from gigagen.models.checkpoint import read_bundle_config

        if args.resume:
            raise UserError("--init-autoencoder starts a new run; --resume continues one (the run already has its autoencoder)")
        ae = read_bundle_config(Path(args.init_autoencoder)).ae
    unet = UNetConfig(latent_ch=ae.latent_ch, n_levels=len(args.magnifications), base_ch=args.unet_base, ch_mult=args.unet_mult,
                      num_res_blocks=args.unet_blocks, dropout=args.unet_dropout, cond_aug=args.cond_aug_max > 0,
                      head_blocks=args.unet_head_blocks or 0, attn_lowest=not args.unet_no_attn)
    if args.tile % unet.divisor or args.layout_tile % unet.divisor:
        raise UserError(f"--tile and --layout-tile must be multiples of {unet.divisor}")
    return _train_config(args, ae, unet)


def _can_learn_from(b: Any, flag: str, path: str) -> None:
    """Runs that continue, guide or decode a bundle encode its levels with its one autoencoder; one whose coarser levels
    are another autoencoder's (--coarse-from) would learn them from the wrong latents. Nor can they carry an exemplar
    (BundleConfig.exemplar)."""
    if b.coarse_ae is not None:
        raise UserError(f"{flag}: {path} holds its coarser levels in a second autoencoder's latent (--coarse-from); "
                        "this run cannot learn from it: train a new --coarse-from run instead")
    if b.exemplar is not None:  # its level decoder is a plain copy; the run would export it without the exemplar
        raise UserError(f"{flag}: {path} synthesises level {b.decoded_level} from an exemplar; train from the bundle it "
                        "was made of, then run scripts/make_exemplar_bundle.py again")


def _coarse_from_config(args: argparse.Namespace, ae: Any) -> Any:
    """--coarse-from B: a new denoiser for the finest level only, in the run's autoencoder's latent (--ae-* or
    --init-autoencoder), reading parents in B's latent; B's cascade, pixel size and coarser levels are kept as B
    samples them, so B must sample those with its main denoiser from plain latents."""
    from gigagen.models.checkpoint import read_bundle_config, validate_config
    from gigagen.models.unet import UNetConfig
    from gigagen.train.loop import coarse_cascade

    others = {"--init-from": args.init_from, "--distill": args.distill, "--sampled-parents": args.sampled_parents,
              "--decoded-parents": args.decoded_parents, "--pixel-levels": args.pixel_levels, "--level-blur": args.level_blur,
              "--coarse-warps": args.coarse_warps, "--cond-aug-max": args.cond_aug_max, "--cond-aug": args.cond_aug}
    given = [flag for flag, value in others.items() if value]
    if given:
        raise UserError(f"--coarse-from trains a new finest-level denoiser on the bundle's coarser levels; it cannot be combined with {', '.join(given)}")
    b = read_bundle_config(Path(args.coarse_from))
    if not b.trained:
        raise UserError(f"--coarse-from: {args.coarse_from} holds an untrained denoiser; its coarser levels would be noise")
    # B's coarser levels are kept only if its main denoiser alone samples them (the run's bundle drops B's guide and expert)
    if (b.coarse is not None or b.coarse_ae is not None or (b.guide is not None and set(b.guide_levels) != {0})
            or (b.expert is not None and set(b.expert_levels) != {0})):
        raise UserError(f"--coarse-from: {args.coarse_from} must sample its coarser levels with its main denoiser "
                        "(no coarse network, coarse autoencoder, or guide or expert there)")
    if args.magnifications and tuple(args.magnifications) != tuple(b.magnifications):
        raise UserError(f"--magnifications: a --coarse-from run keeps {args.coarse_from}'s ({','.join(f'{m:g}' for m in b.magnifications)})")
    args.magnifications = tuple(b.magnifications)
    args.layout_tile = args.layout_tile or int(b.training.get("layout_tile", 16))  # recorded only: the layout is B's
    n = len(b.magnifications)
    finest = (1.0,) + (0.0,) * (n - 1)
    if args.level_probs is not None and tuple(args.level_probs) != finest:
        raise UserError(f"--level-probs: a --coarse-from run trains the finest level only ({','.join(f'{p:g}' for p in finest)})")
    args.level_probs = finest
    if args.init_autoencoder:
        if args.resume:
            raise UserError("--init-autoencoder starts a new run; --resume continues one (the run already has its autoencoder)")
        ae = read_bundle_config(Path(args.init_autoencoder)).ae
    unet = UNetConfig(latent_ch=ae.latent_ch, cond_ch=b.ae.latent_ch, n_levels=n, base_ch=args.unet_base, ch_mult=args.unet_mult,
                      num_res_blocks=args.unet_blocks, dropout=args.unet_dropout, head_blocks=args.unet_head_blocks or 0,
                      attn_lowest=not args.unet_no_attn)
    # the bundle the run will export, checked now as export checks it (cells, tile divisors, B's latents plain), not after training
    bundle = dataclasses.replace(b, ae=ae, unet=unet, tile=args.tile, sample_tile=None, guide=None, guide_levels=(), autoguidance=1.0,
                                 expert=None, expert_levels=(), expert_from=0, **coarse_cascade(b))
    try:
        validate_config(bundle)
    except ValueError as exc:
        raise UserError(f"--coarse-from {args.coarse_from}: {exc}") from None
    return dataclasses.replace(_train_config(args, ae, unet), mpp0=b.mpp0, coarse_from=args.coarse_from, coarse_ae=b.ae)


def _config_from_bundle(args: argparse.Namespace) -> Any:
    """--init-from: the bundle fixes both networks, its tile and its magnifications."""
    from gigagen.models.checkpoint import read_bundle_config

    if args.resume or args.init_autoencoder:
        raise UserError("--init-from starts a new run from a whole bundle; it cannot be combined with --resume or --init-autoencoder")
    b = read_bundle_config(Path(args.init_from))
    _can_learn_from(b, "--init-from", args.init_from)
    if not b.trained:
        raise UserError(f"--init-from: {args.init_from} holds an untrained denoiser; train from scratch instead")
    _take_bundle_tiles(args, b, _magnifications(args.magnifications or tuple(b.magnifications)), new_layout_tile=True)
    if args.layout_tile % b.unet.divisor:
        raise UserError(f"--layout-tile must be a multiple of {b.unet.divisor}")
    if args.pixel_levels is None:
        args.pixel_levels = tuple(b.pixel_levels)
    if args.decoded_parents:
        _check_decoded_parents(args, b)
    heads = b.unet.head_blocks if args.unet_head_blocks is None else args.unet_head_blocks
    if heads < b.unet.head_blocks:
        raise UserError(f"--unet-head-blocks {heads}: {args.init_from}'s denoiser has {b.unet.head_blocks}; a run can grow it, not cut it")
    unet = dataclasses.replace(b.unet, n_levels=len(args.magnifications), dropout=args.unet_dropout,
                               cond_aug=b.unet.cond_aug or args.cond_aug_max > 0, head_blocks=heads)
    return dataclasses.replace(_train_config(args, b.ae, unet), mpp0=b.mpp0)


def _check_decoded_parents(args: argparse.Namespace, b: Any) -> None:
    """--decoded-parents keeps the bundle's level decoder, so the cascade must stay the bundle's and the decoded
    level must get no denoiser steps (gigagen slide never samples it)."""
    k = b.decoded_level
    if k is None:
        raise UserError(f"--decoded-parents: {args.init_from} reads no level with a level decoder (make one with --decoder-of B --decoder-level K)")
    if b.level_decoder_noise:
        # its readings of a real latent invent detail the real finer level does not have: nothing to learn from
        raise UserError(f"--decoded-parents: {args.init_from}'s level decoder samples (--decoder-noise); train the finer levels on real pixels instead")
    if tuple(args.magnifications) != tuple(b.magnifications) or tuple(args.pixel_levels) != tuple(b.pixel_levels):
        raise UserError("--decoded-parents keeps the bundle's level decoder: keep its --magnifications and --pixel-levels")
    if args.level_probs is None or len(args.level_probs) != len(b.magnifications) or args.level_probs[k]:
        raise UserError(f"--decoded-parents: give --level-probs with share 0 for level {k}, which the level decoder reads (e.g. 0.35,0,0.45,0.2)")


def _take_bundle_tiles(args: argparse.Namespace, b: Any, magnifications: tuple[float, ...], new_layout_tile: bool = False) -> None:
    """A run on a bundle's latents uses its cascade and its tiles (the layout tile from its training record).
    With `new_layout_tile` (a denoiser fine-tune) a given --layout-tile replaces the record's: the network is
    convolutional, so the layout level's crop side is a training choice only."""
    from gigagen.train.loop import TrainConfig

    if args.layout_tile is not None and not new_layout_tile:
        raise UserError("--layout-tile: a --guide-of or --decoder-of run keeps its bundle's layout tile")
    args.magnifications = magnifications
    args.tile = b.tile
    if args.layout_tile is None:
        args.layout_tile = int(b.training.get("layout_tile", TrainConfig.layout_tile))


def _guide_config(args: argparse.Namespace) -> Any:
    """--guide-of: the bundle fixes the autoencoder, cascade, tile and pixel size; --unet-* size the guide."""
    from gigagen.models.checkpoint import read_bundle_config
    from gigagen.models.unet import UNetConfig

    if args.init_from or args.init_autoencoder:
        raise UserError("--guide-of trains a new guide denoiser; it cannot be combined with --init-from or --init-autoencoder")
    if args.autoguidance < 0:
        raise UserError("--autoguidance must be >= 0")
    b = read_bundle_config(Path(args.guide_of))
    _can_learn_from(b, "--guide-of", args.guide_of)
    if not b.trained:
        raise UserError(f"--guide-of: {args.guide_of} holds an untrained denoiser; there is nothing to guide")
    args.pixel_levels = _bundle_pixel_levels(args, b, "--guide-of")
    _take_bundle_tiles(args, b, tuple(b.magnifications))
    args.decoder_every = 0  # the bundle's decoder is kept as it is
    if args.level_probs is None:  # by default the guide learns, and guides, the finest level only
        args.level_probs = (1.0,) + (0.0,) * (len(b.magnifications) - 1)
    unet = UNetConfig(latent_ch=b.ae.latent_ch, n_levels=len(b.magnifications), base_ch=args.unet_base,
                      ch_mult=args.unet_mult, num_res_blocks=args.unet_blocks, dropout=args.unet_dropout,
                      cond_aug=args.cond_aug_max > 0, head_blocks=args.unet_head_blocks or 0, attn_lowest=not args.unet_no_attn)
    if b.tile % unet.divisor or args.layout_tile % unet.divisor or (b.sample_tile or 0) % unet.divisor:
        raise UserError(f"--guide-of: the bundle's tiles ({b.tile}, {args.layout_tile}, sampling {b.sampling_tile}) "
                        f"are not multiples of the guide's divisor {unet.divisor}")
    _check_sample_tile(args.sample_tile, b.unet)
    _check_cond_aug(args.cond_aug, b.unet)  # recorded for the bundle's own denoiser
    cfg = _train_config(args, b.ae, unet)
    return dataclasses.replace(cfg, mpp0=b.mpp0, guide_of=args.guide_of, autoguidance=args.autoguidance)


def _decoder_config(args: argparse.Namespace) -> Any:
    """--decoder-of: the bundle fixes every network, the cascade and the pixel size; only its decoder trains."""
    from gigagen.models.checkpoint import read_bundle_config

    if args.init_from or args.init_autoencoder or args.guide_of:
        raise UserError("--decoder-of fine-tunes a bundle's decoder; it cannot be combined with --init-from, --init-autoencoder or --guide-of")
    if args.gan_adv < 0 or args.gan_bank_seeds < 1 or (args.gan_max_steps is not None and args.gan_max_steps < 1):
        raise UserError("--gan-adv must be >= 0, --gan-bank-seeds and --gan-max-steps >= 1")
    if not 0.0 <= args.gan_mix <= 1.0:
        raise UserError("--gan-mix must be in [0, 1]")
    if args.decoder_noise < 0 or args.decoder_kl < 0:
        raise UserError("--decoder-noise and --decoder-kl must be >= 0")
    if args.gan_paired and args.decoder_noise:
        raise UserError("--gan-paired teaches a deterministic decoder; a --decoder-noise decoder learns from real pixels through its posterior encoder")
    b = read_bundle_config(Path(args.decoder_of))
    _can_learn_from(b, "--decoder-of", args.decoder_of)
    if any(not 0 <= t < b.n_train_steps for t in args.gan_paired):
        raise UserError(f"--gan-paired timesteps must be in 0..{b.n_train_steps - 1}")
    args.pixel_levels = _bundle_pixel_levels(args, b, "--decoder-of")
    if args.decoder_refine < 0 or (args.decoder_refine and b.ae.refine_ch):
        raise UserError(f"--decoder-refine must be >= 0, and 0 for a bundle whose decoder has a refiner already ({b.ae.refine_ch} channels)")
    _check_decoder_level(args.decoder_level, args.decoder_refine, b)
    f = b.ae.factor
    if args.ae_crop % f or args.gan_anchor_px < 1 or args.ae_crop % args.gan_anchor_px:
        raise UserError(f"--decoder-of: --ae-crop must be a multiple of the autoencoder factor {f} and of --gan-anchor-px")
    _take_bundle_tiles(args, b, tuple(b.magnifications))
    cfg = _train_config(args, b.ae, b.unet)
    return dataclasses.replace(cfg, mpp0=b.mpp0, decoder_of=args.decoder_of, gan_adv=args.gan_adv, gan_anchor_pool=args.gan_anchor_px,
                               gan_bank_seeds=args.gan_bank_seeds, gan_paired=tuple(args.gan_paired), gan_max_steps=args.gan_max_steps, gan_mix=args.gan_mix,
                               gan_refine=args.decoder_refine, decoder_level=args.decoder_level, decoder_noise=args.decoder_noise,
                               decoder_kl=args.decoder_kl)


def _check_decoder_level(level: int | None, refine: int, b: Any) -> None:
    """--decoder-level names a pixel level under the latent of its own magnification; the level decoder keeps the
    autoencoder decoder's architecture, so no refiner grows on either while a bundle has one."""
    from gigagen.models.checkpoint import validate_config

    if level is None:
        if refine and b.decoded_level is not None:
            raise UserError("--decoder-refine: this bundle reads a level with a level decoder of the autoencoder decoder's architecture; grow no refiner on it")
        return
    if refine:
        raise UserError("--decoder-refine grows the autoencoder's decoder; it cannot be combined with --decoder-level")
    try:
        validate_config(dataclasses.replace(b, decoded_level=level))
    except ValueError:
        raise UserError(f"--decoder-level {level} must be a pixel level under the latent level of its own magnification "
                        f"(this bundle: magnifications {list(b.magnifications)}, pixel levels {list(b.pixel_levels) or 'none'})") from None


def _bundle_pixel_levels(args: argparse.Namespace, b: Any, flag: str) -> tuple[int, ...]:
    """A guide or decoder run learns on its bundle's levels as the bundle holds them."""
    if args.pixel_levels is not None and tuple(args.pixel_levels) != tuple(b.pixel_levels):
        raise UserError(f"--pixel-levels: a {flag} run keeps its bundle's pixel levels ({list(b.pixel_levels) or 'none'})")
    return tuple(b.pixel_levels)


def _pixel_levels(levels: tuple[int, ...] | None, ae: Any, magnifications: tuple[float, ...]) -> tuple[int, ...]:
    """--pixel-levels, checked as the bundle will be: intermediate levels whose cells tile the cascade."""
    from gigagen.engine.levels import cond_factors, level_cells

    levels = tuple(levels or ())
    try:
        cond_factors(tuple(magnifications), level_cells(ae.factor, ae.latent_ch, len(magnifications), levels))
    except ValueError as exc:
        raise UserError(f"--magnifications {','.join(f'{m:g}' for m in magnifications)} with --pixel-levels "
                        f"{','.join(map(str, levels)) or 'none'}: {exc}") from None
    return levels


def _magnifications(mags: tuple[float, ...]) -> tuple[float, ...]:
    """--magnifications (default 20x/5x/1.25x, or the --init-from bundle's), checked as the cascade checks them."""
    from gigagen.train.loop import checked_zooms

    if len(mags) < 2 or min(mags) <= 0:
        raise UserError("--magnifications needs at least two positive levels, finest first")
    checked_zooms(mags)  # whole factors between neighbours, or a UserError
    return mags


def _level_probs(probs: tuple[float, ...] | None, n: int) -> tuple[float, ...]:
    from gigagen.train.loop import default_level_probs

    if probs is None:
        return default_level_probs(n)
    if len(probs) != n or min(probs) < 0 or sum(probs) <= 0:
        raise UserError(f"--level-probs needs {n} non-negative shares, one per magnification, not all zero")
    return probs


def _check_sample_tile(tile: int | None, unet: Any) -> None:
    if tile is not None and (tile < 1 or tile % unet.divisor):
        raise UserError(f"--sample-tile must be a positive multiple of {unet.divisor} for this UNet, not {tile}")


def _check_cond_aug(t: int | None, unet: Any) -> None:
    if t and not unet.cond_aug:
        raise UserError("--cond-aug: a nonzero parent noise timestep needs a denoiser trained with conditioning "
                        "augmentation (--cond-aug-max)")


def _train_config(args: argparse.Namespace, ae: Any, unet: Any) -> Any:
    from gigagen.train.data import ELASTIC_STRAIN
    from gigagen.train.loop import TrainConfig

    _check_sample_tile(args.sample_tile, unet)
    level_probs = _level_probs(args.level_probs, len(args.magnifications))
    if args.coarse_warps and not any(level_probs[1:]):
        raise UserError("--coarse-warps: only the levels above the finest learn from them, and --level-probs gives those none")
    if not args.guide_of:
        _check_cond_aug(args.cond_aug, unet)
    return TrainConfig(
        inputs=list(args.inputs), out=args.out, mpp=args.mpp, name=args.name, holdout_frac=args.holdout_frac,
        max_minutes=args.max_minutes, ae_minutes=args.ae_minutes,
        ae=ae, unet=unet, init_autoencoder=args.init_autoencoder, init_from=args.init_from,
        ae_batch=args.ae_batch, ae_crop=args.ae_crop, unet_batch=args.unet_batch, tile=args.tile,
        layout_tile=args.layout_tile, checkpoint_minutes=args.checkpoint_minutes, seed=args.seed,
        unet_lr=args.unet_lr, unet_max_steps=args.unet_max_steps, lr_decay_minutes=args.lr_decay_minutes, decoder_every=args.decoder_every,
        magnifications=tuple(args.magnifications), level_probs=level_probs,
        device=args.device, precision=args.precision, unet_precision=args.unet_precision, threads=args.threads,
        scale_aug=tuple(args.scale_aug), elastic_aug=args.elastic_aug, elastic_strain=ELASTIC_STRAIN if args.elastic_strain is None else args.elastic_strain, early_stop=args.early_stop,
        coarse_warps=args.coarse_warps, coarse_warp_strain=ELASTIC_STRAIN if args.coarse_warp_strain is None else args.coarse_warp_strain,
        sample_tile=args.sample_tile, cond_aug_max=args.cond_aug_max, cond_aug=args.cond_aug,
        guidance=_guidance(args.guidance, len(args.magnifications)),
        pixel_levels=_pixel_levels(args.pixel_levels, ae, tuple(args.magnifications)), input_perturbation=args.input_perturbation,
        decoded_parents=args.decoded_parents, nucleus_stamps=args.nucleus_stamps,
        sampled_parents=tuple(args.sampled_parents), sampled_parent_prob=args.sampled_parent_prob,
        sampled_parents_from=args.sampled_parents_from, distill=args.distill,
        level_blur=_level_blur(args.level_blur, len(args.magnifications)), t_range=(args.t_range[0], args.t_range[1]),
    )


def _level_blur(sigmas: tuple[float, ...] | None, n_levels: int) -> tuple[float, ...] | None:
    """--level-blur, checked as the bundle will be: one sigma >= 0 per level, 0 at the finest."""
    if sigmas is None:
        return None
    if len(sigmas) != n_levels or min(sigmas) < 0 or sigmas[0] != 0:
        raise UserError(f"--level-blur needs {n_levels} sigmas >= 0, one per magnification finest first, the first 0 "
                        f"(the finest level is what gigagen slide draws), not {','.join(f'{v:g}' for v in sigmas)}")
    return tuple(sigmas)


def _guidance(weights: tuple[float, ...] | None, n_levels: int) -> tuple[float, ...] | None:
    """--guidance: one weight per refinement level (one value: the same at each), as the bundle records it."""
    if weights is None:
        return None
    if min(weights) < 0 or len(weights) not in (1, n_levels - 1):
        raise UserError(f"--guidance needs one weight >= 0, or one per refinement level ({n_levels - 1}), finest first")
    return weights * (n_levels - 1) if len(weights) == 1 else weights


def run(args: argparse.Namespace) -> int:
    from gigagen.train.loop import train

    cfg = config_from_args(args)
    if cfg.decoder_of:
        from gigagen.train.gan_decoder import train_decoder

        path = train_decoder(cfg, resume=args.resume, progress=not args.quiet)
    else:
        path = train(cfg, resume=args.resume, progress=not args.quiet)
    print(path)
    return 0
