#!/usr/bin/env python
"""Model bundles side by side: time, memory and quality of the same slides.

Each `--model "NAME=BUNDLE [gigagen slide options]"` is one contender (a bundle, or a bundle with other sampling
options). For each seed it runs the README's command, `gigagen slide --size N --seed S` with all exports, for every
contender in turn, rotating which goes first so a drift in this machine's speed falls on all, then `gigagen
evaluate` on each against the held-out band of the reference region. It ends with each contender's median wall
time and mean FD, and the PSNR of each slide's overview against the first contender's slide of the same seed.

    .venv/bin/python scripts/bench_bundles.py --model default=gigagen/weights/default.safetensors \\
        --model "new=runs/x/bundle.safetensors" --model "unguided=gigagen/weights/default.safetensors --guidance 1" \\
        [--seeds 7,11,13,17] [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from _slide_eval import ROOT, overviews, psnr, rotate_slides


def parse_model(spec: str) -> tuple[str, str, list[str]]:
    """'NAME=BUNDLE [options]' -> (name, bundle, options)."""
    words = shlex.split(spec)
    if not words or "=" not in words[0] or words[0].startswith("="):
        raise ValueError(f"--model wants 'NAME=BUNDLE [gigagen slide options]', not {spec!r}")
    name, bundle = words[0].split("=", 1)
    if not Path(bundle).is_file():
        raise ValueError(f"--model {name}: no bundle at {bundle}")
    return name, bundle, words[1:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="'NAME=BUNDLE [gigagen slide options]'; repeat")
    p.add_argument("--seeds", default="7,11,13,17")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--keep", default=None, help="write the slides here (a new directory) instead of a temporary one")
    args = p.parse_args()
    try:
        models = [parse_model(m) for m in args.model]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        print(f"bench_bundles.py: {exc}", file=sys.stderr)
        return 2
    names = [m[0] for m in models]
    if len(set(names)) != len(names):
        print(f"bench_bundles.py: model names must differ: {names}", file=sys.stderr)
        return 2
    if args.keep and Path(args.keep).exists():
        print(f"bench_bundles.py: {args.keep} exists; give a new directory", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_bundles_"))
    work.mkdir(parents=True, exist_ok=True)
    walls, rows = rotate_slides(models, seeds, args.size, args.reference, work)
    fds = {name: [r["FD_randconv"] for r in rs] for name, rs in rows.items()}
    print()
    for name in names:
        print(f"{name}: wall s median {np.median(walls[name]):.1f} (range {min(walls[name]):.1f}-{max(walls[name]):.1f}), "
              f"FD randconv mean {np.mean(fds[name]):.4f}")
    first = names[0]
    ov = overviews(work, [f"{name}_s{s}" for name in names for s in seeds])
    for name in names[1:]:
        vals = [psnr(ov[f"{first}_s{s}"], ov[f"{name}_s{s}"]) for s in seeds]
        print(f"overview PSNR {name} vs {first} per seed (dB): {', '.join(f'{v:.1f}' for v in vals)}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
