"""`gigagen export`: write pyramidal TIFF files (OME-TIFF for QuPath/Bio-Formats, TIFF for OpenSlide) from a slide."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gigagen.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write OME-TIFF / pyramidal TIFF / Deep Zoom pack from a slide's OME-Zarr",
                       description=__doc__)
    p.add_argument("slide", help="slide directory (or its slide.ome.zarr)")
    p.add_argument("--formats", default="ome-tiff",
                   help="comma list of ome-tiff (slide.ome.tif), tiff (slide.tif) and dzi "
                        "(slide.dzi.zip, pre-encoded Deep Zoom JPEG tiles); default ome-tiff")
    p.add_argument("--compression", default="jpeg",
                   help="jpeg (default), or lossless deflate, zstd, lzw, none")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    p.add_argument("--tile", type=int, default=512, help="TIFF tile side in pixels (default 512)")
    p.add_argument("--workers", type=int, default=None, help="encoder threads (default: cores, at most 4)")
    p.add_argument("--overwrite", action="store_true", help="replace existing exported files")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export a slide whose generation has not finished (unwritten areas are white)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _progress(quiet: bool) -> Any:
    """progress(format, done, total) drawing one tqdm bar per format on stderr."""
    if quiet:
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(fmt: str, done: int, total: int) -> None:
        bar = bars.get(fmt)
        if bar is None:
            bar = bars[fmt] = tqdm(total=total, desc=f"export {fmt}", unit="tile", file=sys.stderr)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return report


def run(args: argparse.Namespace) -> int:
    from gigagen.io.export import export_slide

    if not Path(args.slide).exists():
        raise UserError(f"{args.slide} does not exist")
    written = export_slide(
        Path(args.slide), formats=args.formats, compression=args.compression, quality=args.quality,
        progress=_progress(args.quiet), overwrite=args.overwrite,
        allow_incomplete=args.allow_incomplete, tile=args.tile, workers=args.workers,
    )
    for path in written.values():
        print(path)
    return 0
