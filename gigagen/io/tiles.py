"""Streaming tile iterators over a slide store level, in TIFF tile order (row-major).

A TIFF writer pulls one tile at a time from these, so memory holds a few tiles whatever the
slide's size. Reads are chunk-aligned when the tile size equals the zarr chunk size (the
default), so each zarr chunk is decompressed exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from gigagen.io.omezarr import SlideReader


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(y0, x0) of every tile of a (height, width) image, row-major as TIFF stores them."""
    return [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]


def pad_tile(block: np.ndarray, tile: int) -> np.ndarray:
    """(h, w, 3) edge block -> (tile, tile, 3), padded by edge replication.

    Replication rather than tifffile's zero padding: a black border inside a JPEG block rings
    into the real pixels next to it, and readers that show padded pixels show no black seam.
    """
    h, w = block.shape[:2]
    if h == tile and w == tile:
        return block
    return np.pad(block, ((0, tile - h), (0, tile - w), (0, 0)), mode="edge")


def iter_level_tiles(
    reader: SlideReader,
    level: int,
    tile: int,
    on_tile: Callable[[], None] | None = None,
    readers: int = 2,
) -> Iterator[np.ndarray]:
    """Yield every tile of a level as (tile, tile, 3) uint8, row-major, edge tiles padded.

    `readers` threads read (and decompress: zlib releases the GIL) up to 2 * readers + 2 tiles
    ahead, so zarr decompression overlaps TIFF encoding while memory stays a few tiles.
    on_tile() is called as each tile is handed over.
    """
    prefetch = 2 * readers + 2
    h, w = reader.level_shapes[level]
    grid = tile_grid(h, w, tile)

    def read(yx: tuple[int, int]) -> np.ndarray:
        y, x = yx
        return pad_tile(reader.read_region(level, x, y, tile, tile), tile)

    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="tile-read") as pool:
        pending: list[Future[np.ndarray]] = []
        ahead = iter(grid)
        for yx in ahead:
            pending.append(pool.submit(read, yx))
            if len(pending) >= prefetch:
                break
        while pending:
            tile_px = pending.pop(0).result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(pool.submit(read, nxt))
            if on_tile is not None:
                on_tile()
            yield tile_px


def level_tile_count(reader: SlideReader, tile: int, levels: range | None = None) -> int:
    """Total number of tiles in the given levels (default: all)."""
    levels = levels if levels is not None else range(len(reader.level_shapes))
    return sum(len(tile_grid(*reader.level_shapes[k], tile)) for k in levels)
