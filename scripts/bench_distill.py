#!/usr/bin/env python
"""A guidance-distilled bundle against its teacher: time, memory and quality of the same slides.

For each seed it runs `gigagen slide --size N --seed S` (all exports, as the README's first command) with the
teacher, the student and, as the control of the same cost, the teacher without its guidance (`--guidance 1
--autoguidance 1`: one pass per tile, as the student), in turn, rotating which goes first so a drift in this
machine's speed falls on all,
then `gigagen evaluate` on each against the held-out band of the reference region, and compares the two slides
of a seed directly: the PSNR of their overviews (the pyramid level at most 1024 px a side), which is high when
the student draws the teacher's slide and falls as their samples part (the teacher's slides of two seeds give
the floor).

    .venv/bin/python scripts/bench_distill.py --student runs/distill/bundle.safetensors
        [--teacher gigagen/weights/default.safetensors] [--seeds 7,11,13,17] [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from _slide_eval import ROOT, overviews, psnr, rotate_slides


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="the distilled bundle (gigagen train --init-from T --distill)")
    p.add_argument("--teacher", default=str(ROOT / "gigagen" / "weights" / "default.safetensors"))
    p.add_argument("--seeds", default="7,11,13,17")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--keep", default=None, help="write the slides here (a new directory) instead of a temporary one")
    args = p.parse_args()
    if args.keep and Path(args.keep).exists():
        print(f"bench_distill.py: {args.keep} exists; give a new directory", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_distill_"))
    work.mkdir(parents=True, exist_ok=True)
    unguided = ["--guidance", "1", "--autoguidance", "1"]
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [("teacher", args.teacher, []), ("student", args.student, []), ("unguided", args.teacher, unguided)]
    walls, _ = rotate_slides(models, seeds, args.size, args.reference, work)
    ov = overviews(work, [f"{name}_s{seed}" for name, _, _ in models for seed in seeds])
    pairs = [psnr(ov[f"teacher_s{seed}"], ov[f"student_s{seed}"]) for seed in seeds]
    controls = [psnr(ov[f"teacher_s{seed}"], ov[f"unguided_s{seed}"]) for seed in seeds]
    ratios = [s / t for s, t in zip(walls["student"], walls["teacher"])]
    print(f"\nwall s, median: {', '.join(f'{name} {np.median(w):.1f}' for name, w in walls.items())}; "
          f"student / teacher per seed: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"overview PSNR to the teacher's slide per seed (dB): student {', '.join(f'{v:.1f}' for v in pairs)}; "
          f"unguided {', '.join(f'{v:.1f}' for v in controls)}")
    if len(seeds) > 1:  # the floor: two unrelated slides of the teacher
        apart = [psnr(ov[f"teacher_s{a}"], ov[f"teacher_s{b}"]) for a, b in zip(seeds, seeds[1:])]
        print(f"overview PSNR teacher vs teacher at the next seed (unrelated slides, dB): {', '.join(f'{v:.1f}' for v in apart)}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
