"""`gigagen evaluate SLIDE --reference REGION`: compare generated 20x tiles with held-out real tiles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gigagen.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="compare a generated slide with a real reference region", description=__doc__.splitlines()[0])
    p.add_argument("slide", help="generated slide directory (or .ome.zarr), or an image at 0.5 um/px")
    p.add_argument("--reference", required=True, help="real region (e.g. data/cmu_small_region.svs); its bottom band is the held-out set")
    p.add_argument("--holdout-frac", type=float, default=0.2, help="held-out bottom band, as in training (default 0.2)")
    p.add_argument("--mpp", type=float, default=None, help="pixel size of the reference when its file lacks it")
    p.add_argument("--checkpoint", default=None, help="model bundle for the autoencoder fidelity row (default: the bundle the slide was made with, from its run.json, if that file still holds it; else the embedded model)")
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels at 20x (default 256)")
    p.add_argument("--max-tiles", type=int, default=64, help="generated tiles sampled (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contact-sheet", default=None, help="write a PNG of generated next to real tiles here")
    p.add_argument("--overview", default=None, help="write a PNG of the whole slide (longer side <= 1024 px) here")
    p.add_argument("--json", default=None, help="also write the numbers as JSON here")


def run(args: argparse.Namespace) -> int:
    from gigagen.train.evaluate import contact_sheet, evaluate, format_table, overview

    if not Path(args.slide).exists():
        raise UserError(f"slide not found: {args.slide}")
    if not 0.0 < args.holdout_frac < 1.0:
        raise UserError("--holdout-frac must be in (0, 1)")
    if args.tile < 32 or args.max_tiles < 2:
        raise UserError("--tile must be >= 32 and --max-tiles >= 2")
    result = evaluate(args.slide, args.reference, tile=args.tile, max_tiles=args.max_tiles, holdout_frac=args.holdout_frac,
                      mpp=args.mpp, checkpoint=args.checkpoint, seed=args.seed)
    tiles = result.pop("_tiles")
    print(format_table(result))
    if args.contact_sheet:
        contact_sheet(tiles["generated"], tiles["held"], args.contact_sheet)
    if args.overview:
        if not Path(args.slide).is_dir():
            raise UserError("--overview needs a gigagen slide directory")
        overview(args.slide, args.overview)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
