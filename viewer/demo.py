"""A synthetic H&E-like slide drawn with numpy (no model): for tests, benchmarks and demos.

Pixels are a pure function of (seed, x, y), so any tile can be drawn alone: a tissue blob on
white glass, pink stroma with wavy fibres, and purple nuclei of 4-7 px radius on a jittered grid.
It is written through gigagen.io.omezarr exactly as the generator writes a real slide.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from gigagen.io.omezarr import ZARR_NAME, create_slide

_NUCLEUS_CELL = 24


def _hash01(a: np.ndarray, b: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer pair (a, b) (a small integer hash)."""
    h = (a.astype(np.uint64) * np.uint64(73856093)) ^ (b.astype(np.uint64) * np.uint64(19349663))
    h ^= np.uint64((seed * 83492791 + salt * 2654435761) & 0xFFFFFFFF)
    h = (h ^ (h >> np.uint64(13))) * np.uint64(1274126177)
    return ((h >> np.uint64(8)) & np.uint64(0xFFFF)).astype(np.float32) / 65536.0


def tissue(x0: int, y0: int, w: int, h: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Level-0 pixels [x0, x0+w) x [y0, y0+h) of a width x height demo slide -> (3, h, w) uint8."""
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    nx, ny = (xs - width / 2) / (0.42 * width), (ys - height / 2) / (0.40 * height)
    edge = nx**2 + ny**2 + 0.12 * np.sin(xs / 97.0 + seed) * np.cos(ys / 131.0)
    inside = edge < 1.0
    fibre = 0.5 + 0.5 * np.sin((0.8 * xs + 0.3 * ys) / 7.0 + 3.0 * np.sin(ys / 50.0))
    rgb = np.stack([232 - 12 * fibre, 150 - 40 * fibre, 196 - 22 * fibre])
    cx, cy = (xs // _NUCLEUS_CELL).astype(np.int64), (ys // _NUCLEUS_CELL).astype(np.int64)
    ox = (cx + 0.2 + 0.6 * _hash01(cx, cy, seed, 1)) * _NUCLEUS_CELL
    oy = (cy + 0.2 + 0.6 * _hash01(cx, cy, seed, 2)) * _NUCLEUS_CELL
    radius = 4.0 + 3.0 * _hash01(cx, cy, seed, 3)
    present = _hash01(cx, cy, seed, 4) < 0.55
    nucleus = present & ((xs - ox) ** 2 + (ys - oy) ** 2 < radius**2)
    rgb = np.where(nucleus[None], np.array([92, 52, 138], np.float32)[:, None, None], rgb)
    noise = _hash01(xs.astype(np.int64), ys.astype(np.int64), seed, 5) * 10 - 5
    rgb = np.where(inside[None], rgb + noise[None], 244 + noise[None] * 0.4)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_demo_slide(
    directory: str | Path,
    width: int = 2048,
    height: int = 1536,
    seed: int = 0,
    mpp: float = 0.5,
    complete: bool = True,
    rows_done: int | None = None,
) -> Path:
    """Write a demo slide directory (slide.ome.zarr, layout.png, run.json); returns it.

    complete=False leaves status "generating"; rows_done then limits level 0 to that many
    512-pixel chunk rows (the rest stays white, as in a slide being generated).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    attrs = {"seed": seed, "model": {"name": "demo-numpy", "kind": "procedural"}}
    writer = create_slide(directory / ZARR_NAME, width, height, mpp, attrs)
    chunk = writer.chunk
    for row, y0 in enumerate(range(0, height, chunk)):
        if rows_done is not None and row >= rows_done:
            break
        for x0 in range(0, width, chunk):
            w, h = min(chunk, width - x0), min(chunk, height - y0)
            writer.write_tile(y0, x0, tissue(x0, y0, w, h, width, height, seed))
    writer.build_pyramid()
    layout_level = min(4, writer.n_levels - 1)  # 20x / 16 = 1.25x
    layout = np.asarray(writer.levels[layout_level][...]).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(layout)).save(directory / "layout.png")
    run = {"command": "demo", "seed": seed, "width": width, "height": height, "mpp": mpp,
           "model": attrs["model"], "layout_magnification": 20 / 2**layout_level}
    (directory / "run.json").write_text(json.dumps(run, indent=2))
    if complete:
        writer.finish({"timings": {"total_s": 0.0}})
    return directory
