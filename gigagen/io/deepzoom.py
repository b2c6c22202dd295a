"""Deep Zoom (DZI) geometry over a slide pyramid: all level arithmetic, no web framework.

Coordinate planes, after openslide's deepzoom.py (all geometry computed once, then lookups):
  dz_   Deep Zoom level l: 2^(L-l) times smaller than level 0, L = ceil(log2(max(W, H)));
        level L is full resolution and level 0 is 1x1 (Microsoft DZI convention).
  src_  a stored pyramid level k (2^k times smaller than level 0, as in the OME-Zarr).
  t_    tile indices (col, row) within a Deep Zoom level.
Deep Zoom levels finer than or equal to the coarsest stored level map onto a stored level of
the same size (each dz_ pixel is one src_ pixel); coarser ones are downsampled from the
coarsest stored level. Bad addresses raise ValueError; the web layer turns that into 404.

render_tile is the one place a tile image is made, so the viewer's tiles and the pre-encoded
Deep Zoom pack (gigagen.io.dzi) are the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image

TILE_FORMATS = ("jpeg", "png")
# (stored level, x, y, w, h) -> (h, w, 3) uint8 pixels of that region
ReadRegion = Callable[[int, int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class TileRegion:
    """Where a Deep Zoom tile comes from and how large it is.

    src_level: stored level to read; (src_x, src_y, src_w, src_h): region of that level;
    out_w, out_h: size of the tile image (differs from src_w, src_h only when resampling).
    """

    src_level: int
    src_x: int
    src_y: int
    src_w: int
    src_h: int
    out_w: int
    out_h: int

    @property
    def needs_resize(self) -> bool:
        return (self.src_w, self.src_h) != (self.out_w, self.out_h)


def _halve_up(n: int) -> int:
    return (n + 1) // 2


class DeepZoomGeometry:
    """Deep Zoom levels of a W x H image stored as a pyramid of `src_shapes` [(h, w), ...].

    src_shapes[k] must be level 0 downsampled by 2^k (h_k = ceil(h_0 / 2^k)), the OME-Zarr
    contract; tile_size and overlap are the DZI TileSize and Overlap.
    """

    def __init__(self, src_shapes: Sequence[tuple[int, int]], tile_size: int = 256, overlap: int = 0):
        if not src_shapes:
            raise ValueError("a pyramid needs at least one level")
        if tile_size < 1 or overlap < 0 or overlap >= tile_size:
            raise ValueError(f"bad tiling: tile_size {tile_size}, overlap {overlap}")
        self.src_shapes = [(int(h), int(w)) for h, w in src_shapes]
        self.height, self.width = self.src_shapes[0]
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty image {self.width}x{self.height}")
        self.tile_size = tile_size
        self.overlap = overlap
        self.max_level = math.ceil(math.log2(max(self.width, self.height)))
        # dz_dims[l] = (w, h) of Deep Zoom level l, by repeated halving rounding up (same as the store)
        dims = [(self.width, self.height)]
        for _ in range(self.max_level):
            w, h = dims[-1]
            dims.append((_halve_up(w), _halve_up(h)))
        self.dz_dims: list[tuple[int, int]] = dims[::-1]
        self.dz_tiles: list[tuple[int, int]] = [
            (math.ceil(w / tile_size), math.ceil(h / tile_size)) for w, h in self.dz_dims
        ]
        self._check_src_shapes()

    def _check_src_shapes(self) -> None:
        for k, (h, w) in enumerate(self.src_shapes):
            if k > self.max_level or self.dz_dims[self.max_level - k] != (w, h):
                raise ValueError(f"stored level {k} is {w}x{h}, not level 0 halved {k} times")

    @property
    def level_count(self) -> int:
        return self.max_level + 1

    def src_level_for(self, dz_level: int) -> int:
        """Stored level feeding Deep Zoom level dz_level (the coarsest one not smaller than it)."""
        return min(self.max_level - dz_level, len(self.src_shapes) - 1)

    def check_tile(self, dz_level: int, col: int, row: int) -> None:
        """ValueError unless (dz_level, col, row) addresses an existing tile."""
        if not 0 <= dz_level <= self.max_level:
            raise ValueError(f"level {dz_level} outside 0..{self.max_level}")
        cols, rows = self.dz_tiles[dz_level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"tile ({col}, {row}) outside {cols}x{rows} tiles of level {dz_level}")

    def dz_tile_bounds(self, dz_level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a tile in its Deep Zoom level, overlap included, clipped at edges."""
        self.check_tile(dz_level, col, row)
        w, h = self.dz_dims[dz_level]
        t, o = self.tile_size, self.overlap
        x0 = col * t - (o if col > 0 else 0)
        y0 = row * t - (o if row > 0 else 0)
        return x0, y0, min((col + 1) * t + o, w), min((row + 1) * t + o, h)

    def tile_region(self, dz_level: int, col: int, row: int) -> TileRegion:
        """The stored-level region behind a tile (see TileRegion)."""
        x0, y0, x1, y1 = self.dz_tile_bounds(dz_level, col, row)
        k = self.src_level_for(dz_level)
        extra = (self.max_level - dz_level) - k  # further halvings below the coarsest stored level
        if extra == 0:
            return TileRegion(k, x0, y0, x1 - x0, y1 - y0, x1 - x0, y1 - y0)
        sh, sw = self.src_shapes[k]
        f = 2**extra
        sx0, sy0 = x0 * f, y0 * f
        sx1, sy1 = min(x1 * f, sw), min(y1 * f, sh)
        return TileRegion(k, sx0, sy0, sx1 - sx0, sy1 - sy0, x1 - x0, y1 - y0)

    def dzi_xml(self, fmt: str) -> str:
        """The DZI descriptor (Microsoft Deep Zoom schema 2008)."""
        if fmt not in TILE_FORMATS:
            raise ValueError(f"tile format {fmt!r} not in {TILE_FORMATS}")
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
            f'Format="{fmt}" Overlap="{self.overlap}" TileSize="{self.tile_size}">'
            f'<Size Width="{self.width}" Height="{self.height}"/></Image>\n'
        )


def encode(rgb: np.ndarray, fmt: str, jpeg_quality: int) -> bytes:
    """rgb: (h, w, 3) uint8, possibly a strided view -> JPEG or PNG bytes.

    JPEG goes straight to libjpeg-turbo through imagecodecs (same bytes as Pillow's default
    4:2:0 encoder, without Pillow's per-image Python overhead or a contiguous copy).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (h, w, 3) uint8 pixels, got {rgb.shape} {rgb.dtype}")
    if fmt == "jpeg":
        return bytes(imagecodecs.jpeg8_encode(rgb, level=jpeg_quality))
    if fmt == "png":
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG", compress_level=3)
        return buf.getvalue()
    raise ValueError(f"unknown tile format {fmt!r}")


def render_tile(read: ReadRegion, geometry: DeepZoomGeometry, dz_level: int, col: int, row: int,
                fmt: str, jpeg_quality: int) -> bytes:
    """Encoded Deep Zoom tile (dz_level, col, row): stored pixels, box-downsampled below the
    coarsest stored level. ValueError if the tile does not exist."""
    r = geometry.tile_region(dz_level, col, row)
    rgb = read(r.src_level, r.src_x, r.src_y, r.src_w, r.src_h)
    if r.needs_resize:
        image = Image.fromarray(np.ascontiguousarray(rgb))
        rgb = np.asarray(image.resize((r.out_w, r.out_h), Image.Resampling.BOX))
    return encode(rgb, fmt, jpeg_quality)
