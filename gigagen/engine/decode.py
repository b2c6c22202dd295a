"""Streaming tiled decode of a latent canvas into pixel tiles, one output chunk at a time."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from gigagen.engine.exemplar import ExemplarBank, ExemplarSpec, synthesize
from gigagen.engine.grid import Tile
from gigagen.engine.levels import fold
from gigagen.engine.noise import gaussian_region
from gigagen.engine.nuclei import StampSpec, sampled_stamps
from gigagen.engine.store import LevelSpec
from gigagen.engine.tiler import step_batches

# latent (1, C, h, w) -> pixels (1, 3, h*f, w*f) float in [-1, 1]; a level decoder with noise channels
# (BundleConfig.level_decoder_noise) takes them after the latent's: (1, C + noise, h, w)
DecodeFn = Callable[[np.ndarray], np.ndarray]
# (seed, level, channels) of the noise a level decoder reads: a function of (seed, level, latent position)
LevelNoise = tuple[int, int, int]
LEVEL_NOISE_KEY = 0x5742  # the `step` key of a level decoder's noise: above any DDIM step, not the stamps' key


EXEMPLAR_GROUP_PX = 1024  # an exemplar level is synthesised in groups of tiles about this many px on a side


def level_noise(noise: LevelNoise, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The level decoder's standard normal input for latent rows y0:y1, cols x0:x1 of the latent it reads:
    the same numbers whatever tile asks, so a tiled decode equals the untiled one."""
    seed, level, channels = noise
    return gaussian_region(seed, level, LEVEL_NOISE_KEY, y0, y1, x0, x1, channels)


def decode_tiles(out_h: int, out_w: int, chunk: int) -> list[Tile]:
    """Pixel tiles aligned to the output store's chunks, raster order."""
    return [Tile(y, min(y + chunk, out_h), x, min(x + chunk, out_w)) for y in range(0, out_h, chunk) for x in range(0, out_w, chunk)]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> [0, 255] uint8 with rounding."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_region(latent: np.ndarray, decode_fn: DecodeFn, factor: int, tile: Tile, halo: int,
                  noise: LevelNoise | None = None) -> np.ndarray:
    """Decode pixel tile `tile` (any f-aligned start) from latent (C, H, W) with `halo` latent pixels of context
    (the decoder's own: AutoencoderConfig.decode_halo), and with `noise` the level decoder's noise channels
    (level_noise) over the same latent window.

    The autoencoder decoder has no spatial statistics (PixelNorm), so with a halo wider than its
    receptive field every pixel equals the untiled decode.
    """
    ly0, lx0 = tile.y0 // factor, tile.x0 // factor
    ly1, lx1 = -(-tile.y1 // factor), -(-tile.x1 // factor)
    a0, b0 = max(ly0 - halo, 0), max(lx0 - halo, 0)
    a1, b1 = min(ly1 + halo, latent.shape[1]), min(lx1 + halo, latent.shape[2])
    z = np.asarray(latent[:, a0:a1, b0:b1], dtype=np.float32)
    if noise is not None:
        z = np.concatenate([z, level_noise(noise, a0, a1, b0, b1)])
    px = decode_fn(z[None])[0]
    oy, ox = tile.y0 - a0 * factor, tile.x0 - b0 * factor
    return to_uint8(px[:, oy : oy + tile.y1 - tile.y0, ox : ox + tile.x1 - tile.x0])


def read_level(latent: np.ndarray, decode_fn: DecodeFn, factor: int, noise: LevelNoise | None = None) -> np.ndarray:
    """A whole latent (C, h, w) decoded at once, with the level decoder's `noise` if any -> (h*f, w*f, 3) uint8
    (scripts and tests; gigagen slide decodes in tiles, which give the same pixels)."""
    h, w = latent.shape[1] * factor, latent.shape[2] * factor
    return decode_region(latent, decode_fn, factor, Tile(0, h, 0, w), 0, noise).transpose(1, 2, 0)


def stream_decode(
    latent: np.ndarray, decode_fn: DecodeFn, factor: int, out_h: int, out_w: int, chunk: int = 512, *, halo: int
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield (pixel tile, (3, h, w) uint8) for the whole (out_h, out_w) image, cropping the latent padding."""
    if chunk % factor:
        raise ValueError("decode chunk must be a multiple of the autoencoder factor")
    for tile in decode_tiles(out_h, out_w, chunk):
        yield tile, decode_region(latent, decode_fn, factor, tile, halo)


def level_tiles(spec: LevelSpec, n_steps: int) -> list[Tile]:
    """The tiles a decoded level is written in: those of its last step's grid, so a disk store reads the final
    state back exactly as it reads a sampled level's (DiskStore.read assembles state n from step n - 1's tiles)."""
    return [t for batch in step_batches(spec, n_steps - 1) for t in batch]


def _widened(tile: Tile, margin: int, factor: int, latent: np.ndarray) -> Tile:
    """`tile` with `margin` px more on every side, out to whole latent cells, within the level: the context a
    post-processed tile needs to equal the untiled level's."""
    h, w = latent.shape[1] * factor, latent.shape[2] * factor
    down = lambda v: max(v - margin, 0) // factor * factor  # noqa: E731
    up = lambda v, n: min(-(-(v + margin) // factor) * factor, n)  # noqa: E731
    return Tile(down(tile.y0), up(tile.y1, h), down(tile.x0), up(tile.x1, w))


def _crop(px: np.ndarray, big: Tile, tile: Tile) -> np.ndarray:
    """(H, W, 3) pixels of `big` -> (3, h, w) of `tile` inside it."""
    oy, ox = tile.y0 - big.y0, tile.x0 - big.x0
    return np.ascontiguousarray(px[oy : oy + tile.y1 - tile.y0, ox : ox + tile.x1 - tile.x0].transpose(2, 0, 1))


def stamped_region(latent: np.ndarray, decode_fn: DecodeFn, factor: int, tile: Tile, halo: int, stamps: StampSpec,
                   seed: int, level: int, noise: LevelNoise | None = None) -> np.ndarray:
    """decode_region with nucleus stamps painted at centres sampled for (seed, level) (engine.nuclei): decoded with
    `stamps.halo` px more on every side (within the latent), so the tile equals the untiled level's."""
    big = _widened(tile, stamps.halo, factor, latent)
    px = decode_region(latent, decode_fn, factor, big, halo, noise).transpose(1, 2, 0)
    return _crop(sampled_stamps(np.ascontiguousarray(px), stamps, seed, level, big.y0, big.x0), big, tile)


def exemplar_region(latent: np.ndarray, decode_fn: DecodeFn, factor: int, tile: Tile, halo: int, bank: ExemplarBank,
                    spec: ExemplarSpec, seed: int, level: int) -> np.ndarray:
    """A tile of a level synthesised from an exemplar (engine.exemplar) -> (3, h, w) uint8: the latent and its decoding
    (the guide) taken with spec.halo px more on every side (within the level) and out to whole latent cells, so the
    synthesis sees whole cells on the level's global patch grid and the tile equals the untiled level's."""
    big = _widened(tile, spec.halo(factor), factor, latent)
    guide = decode_region(latent, decode_fn, factor, big, halo).transpose(1, 2, 0)
    z = np.asarray(latent[:, big.y0 // factor : big.y1 // factor, big.x0 // factor : big.x1 // factor], dtype=np.float32)
    return _crop(synthesize(bank, z, guide, spec, seed, level, big.y0, big.x0), big, tile)


def _pixels(tile: Tile, cell: int) -> Tile:
    """A store tile (cells of `cell` px) in pixels."""
    return Tile(tile.y0 * cell, tile.y1 * cell, tile.x0 * cell, tile.x1 * cell)


def _tile_groups(tiles: list[Tile], cell: int, side: int) -> list[tuple[list[Tile], Tile]]:
    """Store tiles grouped by the side x side px square their top-left pixel falls in, each group with the pixel box
    that bounds it (cells of `cell` px)."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault((t.y0 * cell // side, t.x0 * cell // side), []).append(t)
    return [(g, _pixels(Tile(min(t.y0 for t in g), max(t.y1 for t in g), min(t.x0 for t in g), max(t.x1 for t in g)), cell))
            for g in groups.values()]


def decode_level(store: Any, parent: Any, decode_fn: DecodeFn, *, ae_factor: int, cell: int, scale: float, halo: int,
                 n_steps: int, on_tiles: Callable[[int], None] | None = None,
                 stamps: tuple[StampSpec, int, int] | None = None, noise: LevelNoise | None = None,
                 exemplar: tuple[ExemplarBank, ExemplarSpec, int, int] | None = None) -> None:
    """Write a pixel level that is read off its parent latent of the same magnification instead of sampled
    (BundleConfig.decoded_level): each tile's pixels decoded with `halo` latent px of context (and the level
    decoder's `noise`), rounded to
    uint8 as training's pixels are, with `stamps` (spec, seed, level) nucleus stamps painted in, or with `exemplar`
    (bank, spec, seed, level) synthesised from an exemplar guided by that decoding, folded into
    cells of `cell` px and scaled; committed as the level's final state n_steps, so the cascade and --resume
    treat it like a sampled level. Nothing to do once committed."""
    if store.completed() >= n_steps:
        return
    tiles = level_tiles(store.spec, n_steps)

    def write(tile: Tile, px: np.ndarray) -> None:
        store.write(n_steps, tile, fold(px.astype(np.float32) / 127.5 - 1.0, cell) * np.float32(scale))
        if on_tiles:
            on_tiles(1)

    if exemplar is not None:  # synthesised a group of tiles at a time: the halo is paid once per group, not per tile
        for group, box in _tile_groups(tiles, cell, EXEMPLAR_GROUP_PX):
            px = exemplar_region(parent, decode_fn, ae_factor, box, halo, *exemplar).transpose(1, 2, 0)
            for tile in group:
                write(tile, _crop(px, box, _pixels(tile, cell)))
        store.commit(n_steps)
        return
    for tile in tiles:
        px_tile = _pixels(tile, cell)
        if stamps is None:
            px = decode_region(parent, decode_fn, ae_factor, px_tile, halo, noise)
        else:
            px = stamped_region(parent, decode_fn, ae_factor, px_tile, halo, *stamps, noise=noise)
        write(tile, px)
    store.commit(n_steps)
