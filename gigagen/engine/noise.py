"""Gaussian noise as a pure function of (seed, level, step, position).

Noise is drawn in fixed 64x64 blocks of the latent canvas, each from its own counter-based
generator keyed by (seed, level, step, block row, block column). Any region, read in any order,
by any tile layout, batch size or worker, gets the same numbers: the reason results never depend
on processing order.
"""

from __future__ import annotations

import numpy as np

BLOCK = 64
INITIAL = 0  # the `step` key of the starting noise x_T; DDIM step i (0-based) uses key i + 1


def _block(seed: int, level: int, step: int, by: int, bx: int, channels: int) -> np.ndarray:
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, level, step, by, bx, 0x6E01])))
    return rng.standard_normal((channels, BLOCK, BLOCK), dtype=np.float32)


def gaussian_region(
    seed: int, level: int, step: int, y0: int, y1: int, x0: int, x1: int, channels: int,
    cache: dict[tuple[int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Standard normal noise for latent rows y0:y1, cols x0:x1 -> (channels, y1-y0, x1-x0) float32.

    `cache` (one dict per (seed, level, step), owned by the caller) keeps blocks that several tiles share.
    """
    out = np.empty((channels, y1 - y0, x1 - x0), dtype=np.float32)
    for by in range(y0 // BLOCK, (y1 - 1) // BLOCK + 1):
        for bx in range(x0 // BLOCK, (x1 - 1) // BLOCK + 1):
            block = cache.get((by, bx)) if cache is not None else None
            if block is None:
                block = _block(seed, level, step, by, bx, channels)
                if cache is not None:
                    cache[(by, bx)] = block
            ya, yb = max(y0, by * BLOCK), min(y1, (by + 1) * BLOCK)
            xa, xb = max(x0, bx * BLOCK), min(x1, (bx + 1) * BLOCK)
            out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = block[:, ya - by * BLOCK : yb - by * BLOCK, xa - bx * BLOCK : xb - bx * BLOCK]
    return out
