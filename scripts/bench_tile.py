#!/usr/bin/env python
"""Sampling tile side against time and quality, with the embedded default (or --checkpoint) model.

The denoiser is fully convolutional (attention at its lowest resolution takes any token count), so it
can sample with larger latent tiles than the 32 x 32 crops it was trained on: more context per tile and
fewer tile edges per step, at the same one evaluation per latent pixel per step. For each tile side it
runs `gigagen slide --tile N` for each seed (no exports) and `gigagen evaluate` against the held-out
band, and `scripts/sample_real_parent.py --tile N` (the 20x level sampled from the real 5x parent of
the held-out band; FD against that band, own tiles / paired tiles) for each real-parent seed.

    .venv/bin/python scripts/bench_tile.py [--tiles 32,64,128] [--size 2048] [--seeds 7,11,13]
        [--real-parent-seeds 1,2,3] [--checkpoint B]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _slide_eval import ROOT, ROW_HEADER, real_parent_fd, row_cells, slide_and_evaluate


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=_ints, default=[32, 64, 128])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seeds", type=_ints, default=[7, 11, 13])
    p.add_argument("--real-parent-seeds", type=_ints, default=[1, 2, 3], help="empty: skip the real-parent samples")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    args = p.parse_args()
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    print(f"| tile | seed | slide {args.size}^2 wall s | {ROW_HEADER} |")
    print("|---|---|---|" + "---|" * len(ROW_HEADER.split("|")))
    real_parent = []
    with tempfile.TemporaryDirectory() as tmp:
        for tile in args.tiles:
            for seed in args.seeds:
                wall, g = slide_and_evaluate(Path(tmp) / f"t{tile}-s{seed}", args.size, seed, args.reference, ckpt, ["--tile", str(tile)])
                print(f"| {tile} | {seed} | {wall:.1f} | {row_cells(g)} |", flush=True)
            fds = [real_parent_fd(ckpt, ["--tile", str(tile), "--seed", str(s)]) for s in args.real_parent_seeds]
            real_parent.append((tile, fds))
    if args.real_parent_seeds:
        print(f"\n| tile | real-parent FD, own tiles (seeds {', '.join(map(str, args.real_parent_seeds))}) | paired |")
        print("|---|---|---|")
        for tile, fds in real_parent:
            print(f"| {tile} | {' / '.join(f'{a:.3f}' for a, _ in fds)} | {' / '.join(f'{b:.3f}' for _, b in fds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
