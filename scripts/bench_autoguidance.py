#!/usr/bin/env python
"""Autoguidance weight (and guide network) against time and quality.

For each model bundle with a guide network and each weight it runs `gigagen slide --autoguidance W`
(same seed and size, no exports) and `gigagen evaluate` against the held-out band of the reference
region, and `scripts/sample_real_parent.py` (the 20x level sampled from the real 5x parent of the
held-out band, FD against that band). One table row each; weight 1 is the model without guidance.

    .venv/bin/python scripts/bench_autoguidance.py [--checkpoints A,B] [--weights 1,1.5,2,3] [--size 2048] [--seeds 7]
        [--crops docs/autoguidance.png]

--crops stacks the same 20x region of every first-seed slide into one labelled PNG: the guide acts on the
20x level only, so the layout and 5x levels, hence the tissue in the region, are the same in every row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _slide_eval import ROOT, ROW_HEADER, real_parent_fd, row_cells, slide_and_evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="", help="comma-separated bundles (default: the embedded model)")
    p.add_argument("--weights", default="1,1.5,2,3")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seeds", default="7")
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--no-real-parent", action="store_true", help="skip the real-parent sample (faster)")
    p.add_argument("--crops", default=None, help="PNG: the same 20x region (--crop-box X,Y,W,H) of every first-seed slide")
    p.add_argument("--crop-box", default="300,1024,1000,320")
    args = p.parse_args()
    crops: list[tuple[str, object]] = []
    ckpts = [c for c in args.checkpoints.split(",") if c] or [""]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| model | weight | seed | slide {args.size}^2 wall s | {ROW_HEADER} | FD real-parent (own tiles / paired) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(ckpts):
            ckpt = ["--checkpoint", c] if c else []
            label = c or "embedded"  # the path as given: runs/a/bundle and runs/b/bundle share a stem
            for w in (float(s) for s in args.weights.split(",")):
                rp = "-" if args.no_real_parent else "%.3f / %.3f" % real_parent_fd(ckpt, ["--autoguidance", str(w)])
                for seed in seeds:
                    out = Path(tmp) / f"model{i}-w{w:g}-s{seed}"
                    wall, g = slide_and_evaluate(out, args.size, seed, args.reference, ckpt, ["--autoguidance", str(w)])
                    if args.crops and seed == seeds[0]:
                        crops.append((f"{label}, autoguidance {w:g}, seed {seed}", read_crop(out, args.crop_box)))
                    print(f"| {label} | {w:g} | {seed} | {wall:.1f} | {row_cells(g)} | {rp} |", flush=True)
    if args.crops:
        save_stack(crops, args.crops)
        print(f"wrote {args.crops}")
    return 0


def read_crop(slide: Path, box: str) -> object:
    import numpy as np
    import zarr

    x, y, w, h = (int(v) for v in box.split(","))
    level0 = zarr.open_group(str(slide / "slide.ome.zarr"), mode="r")["0"]
    return np.asarray(level0[:, y : y + h, x : x + w]).transpose(1, 2, 0)


def save_stack(crops: list[tuple[str, object]], path: str) -> None:
    """Crops one above the other, each under a one-line label."""
    from PIL import Image, ImageDraw

    w = max(c.shape[1] for _, c in crops)  # type: ignore[attr-defined]
    sheet = Image.new("RGB", (w, sum(c.shape[0] + 16 for _, c in crops)), "white")  # type: ignore[attr-defined]
    y = 0
    for label, crop in crops:
        ImageDraw.Draw(sheet).text((4, y + 2), label, fill="black")
        sheet.paste(Image.fromarray(crop), (0, y + 16))  # type: ignore[arg-type]
        y += crop.shape[0] + 16  # type: ignore[attr-defined]
    sheet.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
