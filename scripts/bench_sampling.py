#!/usr/bin/env python
"""One sampling option against time and quality, with the embedded default (or --checkpoint) model.

For each value of the option (`--vary tile`: the latent tile side; `--vary cond-aug`: the parent noise
timestep of conditioning augmentation; `--vary autoguidance`: the guide weight; `--vary guidance`: the
classifier-free guidance weights per refinement level, finest first, written with ':' inside a value; `--vary eta`:
the DDIM eta of every level, 0 deterministic to 1 DDPM-like) it runs
`gigagen slide --OPTION VALUE` for each seed (no exports) and `gigagen evaluate` against the held-out
band, and `scripts/sample_real_parent.py --OPTION VALUE` (the 20x level sampled from the real 5x parent
of the held-out band; FD against that band, own tiles / paired tiles) for each real-parent seed.
Slides test the whole cascade, generated parents included; real-parent samples test the 20x level alone
(not run for --vary guidance: they sample 20x with the bundle's 20x weight).

    .venv/bin/python scripts/bench_sampling.py --vary tile [--values 32,64,128] [--size 2048] [--seeds 7,11,13]
        [--real-parent-seeds 1,2,3] [--checkpoint B]
    .venv/bin/python scripts/bench_sampling.py --vary cond-aug --values 0,100,200,300
    .venv/bin/python scripts/bench_sampling.py --vary guidance --values 1:1,1:2,1:3 --seeds 7,11,13,17,19,23,29
    .venv/bin/python scripts/bench_sampling.py --vary eta --values 0,0.5,1 --seeds 7,11,13,17
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _slide_eval import ROOT, ROW_HEADER, real_parent_fd, row_cells, slide_and_evaluate

OPTIONS = ("tile", "cond-aug", "autoguidance", "guidance", "eta")


def _list(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vary", choices=OPTIONS, default="tile", help="the gigagen slide option to vary (default tile)")
    p.add_argument("--values", type=_list, default=None, help="comma-separated values (default for tile: 32,64,128)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seeds", type=_list, default=["7", "11", "13"])
    p.add_argument("--real-parent-seeds", type=_list, default=["1", "2", "3"], help="empty: skip the real-parent samples")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    args = p.parse_args()
    values = args.values or (["32", "64", "128"] if args.vary == "tile" else None)
    if not values:
        p.error(f"--vary {args.vary} needs --values")
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    values = [v.replace(":", ",") for v in values]  # per-level weights: 1:2 is --guidance 1,2
    if args.vary == "guidance":
        args.real_parent_seeds = []
    flag = f"--{args.vary}"
    print(f"| {args.vary} | seed | slide {args.size}^2 wall s | {ROW_HEADER} |")
    print("|---|---|---|" + "---|" * len(ROW_HEADER.split("|")))
    real_parent = []
    with tempfile.TemporaryDirectory() as tmp:
        for value in values:
            for seed in args.seeds:
                wall, g = slide_and_evaluate(Path(tmp) / f"v{value}-s{seed}", args.size, int(seed), args.reference, ckpt, [flag, value])
                print(f"| {value} | {seed} | {wall:.1f} | {row_cells(g)} |", flush=True)
            fds = [real_parent_fd(ckpt, [flag, value, "--seed", s]) for s in args.real_parent_seeds]
            real_parent.append((value, fds))
    if args.real_parent_seeds:
        print(f"\n| {args.vary} | real-parent FD, own tiles (seeds {', '.join(args.real_parent_seeds)}) | paired |")
        print("|---|---|---|")
        for value, fds in real_parent:
            print(f"| {value} | {' / '.join(f'{a:.3f}' for a, _ in fds)} | {' / '.join(f'{b:.3f}' for _, b in fds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
