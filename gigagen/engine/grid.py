"""Tile geometry on a latent canvas, as pure functions (numpy only).

Coordinates are latent pixels of one level. Three blend modes:
- "gridshift": non-overlapping tiles whose grid moves by a seeded random offset at every denoising
  step (the idea of SpotDiffusion / DemoFusion's shifted windows), so every latent pixel is
  denoised exactly once per step and no tile border stays in one place. Edges are cut, never
  wrapped around; an edge strip narrower than half a tile is merged into its neighbour, so tiles
  are between tile/2 and 1.5*tile wide (or the whole canvas when it is smaller than a tile).
- "none": the same with a fixed grid (offset 0): cheap, but its seams never move.
- "overlap": windows of one tile size at a stride (default tile/2) whose predictions are averaged
  (MultiDiffusion, Bar-Tal et al. 2023, eq. 5); about (tile/stride)^2 times the evaluations.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator

import numpy as np

BLEND_MODES = ("gridshift", "overlap", "none")


@dataclass(frozen=True)
class Tiling:
    """How a level is cut into tiles; only tile, mode, divisor and stride change the result."""

    tile: int  # latent tile side
    mode: str = "gridshift"  # see BLEND_MODES
    divisor: int = 4  # tile edges and offsets are multiples of this (the UNet's downsampling)
    stride: int | None = None  # overlap mode only; default tile // 2
    batch_size: int = 16
    order: str = "raster"  # processing order; results must not depend on it (tested)


@dataclass(frozen=True, order=True)
class Tile:
    """A rectangle [y0, y1) x [x0, x1) of a latent canvas."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def shifted_segments(length: int, tile: int, offset: int) -> list[tuple[int, int]]:
    """Split [0, length) at offset + k*tile; merge edge pieces shorter than tile/2 into their neighbour."""
    if length <= tile:
        return [(0, length)]
    cuts = [0] + list(range(offset if offset > 0 else tile, length, tile)) + [length]
    if len(cuts) > 2 and 2 * (cuts[1] - cuts[0]) < tile:
        del cuts[1]
    if len(cuts) > 2 and 2 * (cuts[-1] - cuts[-2]) < tile:
        del cuts[-2]
    return list(zip(cuts[:-1], cuts[1:]))


def window_segments(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Overlapping windows of size min(tile, length) every `stride`, the last flush with the edge."""
    if length <= tile:
        return [(0, length)]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(s, s + tile) for s in starts]


def step_offset(seed: int, level: int, step: int, tile: int, divisor: int) -> tuple[int, int]:
    """Seeded grid offset (oy, ox) for one denoising step, a multiple of `divisor` in [0, tile)."""
    rng = np.random.default_rng([seed, level, step, 0x9D1D])
    choices = tile // divisor
    oy, ox = rng.integers(0, choices, size=2)
    return int(oy) * divisor, int(ox) * divisor


def step_segments(
    shape: tuple[int, int], tile: int, mode: str, *, seed: int, level: int, step: int, divisor: int, stride: int | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row and column segments of one denoising step; the step's tiles are their Cartesian product."""
    h, w = shape
    if mode == "gridshift":
        oy, ox = step_offset(seed, level, step, tile, divisor)
        rows, cols = shifted_segments(h, tile, oy), shifted_segments(w, tile, ox)
    elif mode == "none":
        rows, cols = shifted_segments(h, tile, 0), shifted_segments(w, tile, 0)
    elif mode == "overlap":
        s = stride or tile // 2
        rows, cols = window_segments(h, tile, s), window_segments(w, tile, s)
    else:
        raise ValueError(f"unknown blend mode {mode!r}; choose from {', '.join(BLEND_MODES)}")
    return rows, cols


def step_tiles(
    shape: tuple[int, int], tile: int, mode: str, *, seed: int, level: int, step: int, divisor: int, stride: int | None = None
) -> list[Tile]:
    """All tiles of one denoising step in raster order, for a canvas of (height, width) latent pixels."""
    rows, cols = step_segments(shape, tile, mode, seed=seed, level=level, step=step, divisor=divisor, stride=stride)
    return [Tile(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def overlapping(segments: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The disjoint, sorted segments that intersect [start, stop)."""
    i = bisect.bisect_right([a for a, _ in segments], start) - 1
    out = []
    for a, b in segments[max(i, 0) :]:
        if a >= stop:
            break
        if b > start:
            out.append((a, b))
    return out


def batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Group tiles of equal shape into batches of at most batch_size (a network batch needs one shape)."""
    by_shape: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        by_shape.setdefault(t.shape, []).append(t)
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def coverage(shape: tuple[int, int], tiles: list[Tile]) -> np.ndarray:
    """How many tiles cover each latent pixel: (height, width) int array (for tests and cost accounting)."""
    count = np.zeros(shape, dtype=np.int32)
    for t in tiles:
        count[t.y0 : t.y1, t.x0 : t.x1] += 1
    return count


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the leading two axes (k in 0..7)."""
    if k & 4:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, k & 3, axes=(0, 1)))
