"""Shared fixtures for the gigagen.io tests: small slides with H&E-like structured content."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gigagen.io.omezarr import create_slide

_PINK = np.array([236, 170, 200], dtype=np.float32)  # eosin stroma
_PURPLE = np.array([90, 50, 140], dtype=np.float32)  # haematoxylin nuclei


def synthetic_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """H&E-like test image -> (3, h, w) uint8: pink stroma with gradients, purple nuclei, white gaps.

    Smooth enough that JPEG at quality 90 stays within a few grey levels, varied enough that a
    shifted, flipped, mis-coloured or mis-scaled read cannot pass a comparison.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.85 + 0.15 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    img = _PINK[:, None, None] * shade[None]
    n = max(1, h * w // 1300)  # ~3000 nuclei per mm2 at 0.5 um, as in CMU-1
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    r = rng.uniform(3, 7, n)
    mask = np.zeros((h, w), dtype=bool)
    for y, x, rad in zip(cy, cx, r):
        y0, y1, x0, x1 = int(max(y - rad, 0)), int(min(y + rad + 1, h)), int(max(x - rad, 0)), int(min(x + rad + 1, w))
        sub = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= rad**2
        mask[y0:y1, x0:x1] |= sub
    img[:, mask] = _PURPLE[:, None]
    gap = ((xx - w * 0.7) ** 2 / (w * 0.1) ** 2 + (yy - h * 0.3) ** 2 / (h * 0.15) ** 2) < 1
    img[:, gap] = 245.0
    img = _optical_blur(_optical_blur(img))  # a scanner's optics never give pixel-sharp edges
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _optical_blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 binomial blur with edge replication, (C, h, w) float."""
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    p = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4


def write_slide(
    slide_dir: Path,
    width: int,
    height: int,
    chunk: int = 512,
    min_level_size: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Write a complete slide (tiles, pyramid, finish) into slide_dir -> its level 0 (3, H, W)."""
    img = synthetic_rgb(height, width, seed)
    writer = create_slide(slide_dir / "slide.ome.zarr", width, height, 0.5,
                          {"seed": seed, "model": "test-pattern"}, chunk=chunk,
                          min_level_size=min_level_size)
    for y in range(0, height, chunk):
        for x in range(0, width, chunk):
            writer.write_tile(y, x, img[:, y : y + chunk, x : x + chunk])
    writer.build_pyramid()
    writer.finish({"run": {"test": True}})
    return img
