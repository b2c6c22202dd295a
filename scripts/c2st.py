#!/usr/bin/env python
"""Classifier two-sample test of generated slides against the held-out band (gigagen.train.c2st).

Each `--slides NAME=DIR[,DIR...]` is one contender: the 20x level of its slides (gigagen slide outputs). A small
network learns to tell their 64 px tissue crops from those of the real held-out band, on the left half of each
(slides and band) and is scored on the right half, and back; the accuracy is 0.5 for sets it cannot tell apart.
The first row is real against real: the training part of the region against its held-out band, which shows how far
apart two parts of the one real region already are.

    .venv/bin/python scripts/c2st.py --slides default=/tmp/bb/default_s7,/tmp/bb/default_s11 \\
        --slides quilt=/tmp/bb/quilt_s7,/tmp/bb/quilt_s11 [--reference data/cmu_small_region.svs] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.errors import UserError, script_exit  # noqa: E402
from gigagen.train.c2st import C2STConfig, band_halves, two_sample_accuracy  # noqa: E402
from gigagen.train.evaluate import split_reference  # noqa: E402

MAX_SIDE = 16384  # a slide's halves are read whole: this script is for benchmark slides, not gigapixel ones


def slide_halves(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the left and right halves of a slide's 20x level (band_halves on each half, so none overlap)."""
    from gigagen.io.omezarr import open_slide

    reader = open_slide(path)
    if max(reader.width, reader.height) > MAX_SIDE:
        raise UserError(f"{path}: {reader.width}x{reader.height} px; this script reads slides of at most {MAX_SIDE} px")
    if abs(reader.mpp - 0.5) > 0.025:
        raise UserError(f"{path} is at {reader.mpp} um/px; the test compares crops at 0.5 um/px")
    return band_halves(reader.read_region(0, 0, 0, reader.width, reader.height), size)


def parse(spec: str) -> tuple[str, list[Path]]:
    if "=" not in spec or spec.startswith("="):
        raise UserError(f"--slides wants NAME=DIR[,DIR...], not {spec!r}")
    name, dirs = spec.split("=", 1)
    paths = [Path(d) for d in dirs.split(",") if d]
    missing = [str(p) for p in paths if not p.exists()]
    if not paths or missing:
        raise UserError(f"--slides {name}: no slide at {', '.join(missing) or 'an empty list'}")
    return name, paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slides", action="append", required=True, help="NAME=DIR[,DIR...]; repeat")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--runs", type=int, default=3, help="seeds of the classifier per direction (default 3)")
    p.add_argument("--steps", type=int, default=C2STConfig.steps)
    args = p.parse_args()

    def body() -> str:
        import torch

        torch.set_num_threads(2)
        cfg = C2STConfig(runs=args.runs, steps=args.steps)
        contenders = [parse(s) for s in args.slides]
        train, held = split_reference(args.reference, 0.2)
        real = band_halves(held, cfg.crop)
        sets = [("real training part", band_halves(train, cfg.crop))]
        for name, paths in contenders:
            parts = [slide_halves(q, cfg.crop) for q in paths]
            sets.append((name, (np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts]))))
        print(f"real held-out band: {len(real[0])} / {len(real[1])} crops of {cfg.crop} px (left / right half)")
        print("| against the held-out band | crops (left / right) | accuracy (0.5 = indistinguishable) | s |")
        print("|---|---|---|---|")
        for name, halves in sets:
            t = time.perf_counter()
            mean, std = two_sample_accuracy(real, halves, cfg)
            print(f"| {name} | {len(halves[0])} / {len(halves[1])} | {mean:.3f} +- {std:.3f} | {time.perf_counter() - t:.0f} |", flush=True)
        return f"{cfg.runs} classifier seeds per direction, {cfg.steps} steps each, at most {cfg.max_crops} crops per class"

    return script_exit("c2st", body)


if __name__ == "__main__":
    sys.exit(main())
