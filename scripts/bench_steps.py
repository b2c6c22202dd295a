#!/usr/bin/env python
"""DDIM steps per level against time and quality, with the embedded default (or --checkpoint) model.

For each step count it runs `gigagen slide` (same seed and size, no exports) and `gigagen evaluate`
against the held-out band of the reference region, and prints one table row: wall seconds of the
slide run and the evaluation's stain, nuclei, texture and Frechet numbers.

    .venv/bin/python scripts/bench_steps.py [--steps 10,20,40] [--size 2048] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _slide_eval import ROOT, slide_and_evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="10,20,40")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    args = p.parse_args()
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    print(f"| steps | slide {args.size}^2 wall s | W1 H | W1 E | nuclei/mm2 | area med um2 | HF energy | FD randconv |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.steps.split(",")):
            wall, g = slide_and_evaluate(Path(tmp) / f"s{n}", args.size, args.seed, args.reference, ckpt, ["--steps", str(n)])
            print(f"| {n} | {wall:.1f} | {g['W1_H']:.4f} | {g['W1_E']:.4f} | {g['nuclei_per_mm2']:.0f} | "
                  f"{g['nucleus_area_median_um2']:.1f} | {g['hf_energy']:.4f} | {g['FD_randconv']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
