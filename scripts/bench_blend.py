"""Compare the three blend modes on the same slide: network evaluations, wall time, and a seam measure.

    .venv/bin/python scripts/bench_blend.py --size 2048 [--checkpoint PATH] [--steps 20]

Seam measure: mean absolute pixel difference across the tile borders of the final denoising step,
divided by the same difference everywhere else (per axis, averaged). 1.00 means borders are
indistinguishable from the rest of the image; a visible seam pushes it above 1. Measured on the
level-0 (20x) image, at the borders of the finest level's last step (where a seam would survive).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from gigagen.config import RunConfig
from gigagen.engine.grid import step_tiles
from gigagen.models.checkpoint import read_bundle_config, DEFAULT_WEIGHTS
from gigagen.pipeline import generate


def border_ratio(img: np.ndarray, borders: list[int], axis: int) -> float:
    """|I[b] - I[b-1]| at border positions b over the same difference at all other positions."""
    diff = np.abs(np.diff(img.astype(np.float32), axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
    idx = np.array([b - 1 for b in borders if 0 < b < img.shape[axis]], dtype=int)
    if idx.size == 0:
        return float("nan")
    mask = np.zeros(diff.shape[0], dtype=bool)
    mask[idx] = True
    return float(diff[mask].mean() / diff[~mask].mean())


def seam_score(slide: Path, cfg: RunConfig, factor: int, divisor: int, tile: int, steps: int) -> float:
    img = zarr.open_group(str(slide / "slide.ome.zarr"), mode="r")["0"][:]
    run = json.loads((slide / "run.json").read_text())
    shape = tuple(run["levels"][0]["latent_shape"])
    tiles = step_tiles(shape, tile, cfg.blend, seed=cfg.seed, level=0, step=steps - 1, divisor=divisor, stride=cfg.overlap_stride)
    rows = sorted({t.y0 * factor for t in tiles} | {t.y1 * factor for t in tiles})
    cols = sorted({t.x0 * factor for t in tiles} | {t.x1 * factor for t in tiles})
    return (border_ratio(img, rows, 1) + border_ratio(img, cols, 2)) / 2


def _warm_up(checkpoint: str | None) -> None:
    """One tiny run first, so one-off costs (imports, kernel set-up) are not charged to the first mode."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(RunConfig(width=256, height=256, out=str(Path(tmp) / "w"), seed=0, steps=(2,), checkpoint=checkpoint, formats=()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--modes", default="gridshift,overlap,none")
    args = ap.parse_args()
    mc = read_bundle_config(Path(args.checkpoint) if args.checkpoint else DEFAULT_WEIGHTS)
    rows = []
    _warm_up(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(args.modes.split(",")):
            cfg = RunConfig(width=args.size, height=args.size, out=str(Path(tmp) / f"{i}-{mode}"), seed=args.seed, steps=(args.steps,),
                            blend=mode, checkpoint=args.checkpoint, formats=())
            t0 = time.perf_counter()
            record = generate(cfg)
            wall = time.perf_counter() - t0
            ne = record["network_evaluations"]
            seam = seam_score(Path(cfg.out), cfg, mc.ae.factor, mc.unet.divisor, record["config"]["tile"], args.steps)
            rows.append((mode, ne["unet_tiles"], ne["per_latent_pixel_per_step"], wall, seam))
    print(f"model: {mc.name} (trained: {mc.trained}); {args.size}x{args.size}, {args.steps} steps, seed {args.seed}")
    print(f"{'blend':<10} {'UNet tiles':>10} {'evals/latent px/step':>21} {'wall s':>8} {'seam ratio':>11}")
    for mode, tiles, per_px, wall, seam in rows:
        print(f"{mode:<10} {tiles:>10} {per_px:>21.3f} {wall:>8.1f} {seam:>11.3f}")


if __name__ == "__main__":
    main()
