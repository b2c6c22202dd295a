"""Tile pixels and encoded tiles: pre-encoded packs, stored-chunk reads, encoding, caches.

Finished slides with a matching slide.dzi.zip (gigagen.io.dzi) serve its JPEG bytes as they are.
Everything else is rendered from the OME-Zarr by gigagen.io.deepzoom.render_tile.

Two caches, both only for finished slides (a slide being generated changes under us):
  chunks  decoded stored chunks (one zlib inflate feeds all Deep Zoom tiles inside a chunk);
  tiles   encoded tile bytes, keyed by the slide's revision, so a rewritten slide misses.
"""

from __future__ import annotations

import hashlib

import imagecodecs
import numpy as np
from PIL import Image

from gigagen.io.deepzoom import encode, render_tile
from viewer.cache import ByteLRU
from viewer.slides import Slide

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


def prime_codecs() -> None:
    """Load the codecs' native modules now: imagecodecs imports them on first use, which
    otherwise lands on the first burst of tile requests (~100 ms each on a cold start)."""
    rgb = np.full((16, 16, 3), 200, np.uint8)
    encode(rgb, "jpeg", 80)
    encode(rgb, "png", 80)
    if imagecodecs.DEFLATE.available:
        imagecodecs.deflate_decode(imagecodecs.deflate_encode(rgb.tobytes()))


def content_etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


class TileService:
    """Reads Deep Zoom tiles of slides and encodes them, caching what cannot change."""

    def __init__(self, jpeg_quality: int = 80, tile_cache_bytes: int = 128 << 20,
                 chunk_cache_bytes: int = 96 << 20) -> None:
        self.jpeg_quality = jpeg_quality
        self.tiles: ByteLRU[bytes] = ByteLRU(tile_cache_bytes, len)
        self.chunks: ByteLRU[np.ndarray] = ByteLRU(chunk_cache_bytes, lambda a: a.nbytes)

    def tile_etag(self, slide: Slide, level: int, col: int, row: int, fmt: str) -> str | None:
        """ETag of a finished slide's tile, known without reading it; None while generating."""
        if not slide.complete:
            return None
        g = slide.geometry
        pack = slide.pack() if fmt == "jpeg" else None
        quality = f"pack{pack.quality}" if pack is not None else self.jpeg_quality
        key = f"{slide.rev}/{g.tile_size}/{g.overlap}/{quality}/{level}/{col}/{row}/{fmt}"
        return '"' + hashlib.blake2b(key.encode(), digest_size=12).hexdigest() + '"'

    def tile(self, slide: Slide, level: int, col: int, row: int, fmt: str) -> bytes:
        """Encoded Deep Zoom tile; ValueError if (level, col, row) does not exist."""
        slide.geometry.check_tile(level, col, row)
        if not slide.complete:
            return self._render(slide, level, col, row, fmt)
        pack = slide.pack() if fmt == "jpeg" else None
        if pack is not None:  # pre-encoded: one pread, no decode or encode (and no cache needed)
            data = pack.tile(level, col, row)
            if data is not None:
                return data
        key = (slide.id, slide.rev, level, col, row, fmt)
        return self.tiles.get_or_compute(key, lambda: self._render(slide, level, col, row, fmt))

    def _render(self, slide: Slide, level: int, col: int, row: int, fmt: str) -> bytes:
        def read(k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            return self.read(slide, k, x, y, w, h)

        return render_tile(read, slide.geometry, level, col, row, fmt, self.jpeg_quality)

    def thumbnail(self, slide: Slide, max_size: int = 256) -> bytes:
        """JPEG of the whole slide, longer side <= max_size, from the coarsest stored level."""
        k = len(slide.reader.level_shapes) - 1
        h, w = slide.reader.level_shapes[k]
        rgb = self.read(slide, k, 0, 0, w, h)
        scale = min(1.0, max_size / max(w, h))
        image = Image.fromarray(np.ascontiguousarray(rgb))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        return encode(np.asarray(image), "jpeg", self.jpeg_quality)

    def read(self, slide: Slide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [x, x+w) x [y, y+h) of a stored level (inside it) -> (h, w, 3) uint8."""
        if not slide.complete:
            return slide.reader.read_region(level, x, y, w, h)
        c = slide.reader.chunk
        cx0, cy0, cx1, cy1 = x // c, y // c, (x + w - 1) // c, (y + h - 1) // c
        if cx0 == cx1 and cy0 == cy1:  # the common case: a view into one cached chunk
            block = self._chunk(slide, level, cx0, cy0)
            return block[y - cy0 * c : y - cy0 * c + h, x - cx0 * c : x - cx0 * c + w]
        out = np.empty((h, w, 3), np.uint8)
        for cy in range(cy0, cy1 + 1):
            for cx in range(cx0, cx1 + 1):
                block = self._chunk(slide, level, cx, cy)
                bx0, by0 = max(x, cx * c), max(y, cy * c)
                bx1, by1 = min(x + w, cx * c + block.shape[1]), min(y + h, cy * c + block.shape[0])
                out[by0 - y : by1 - y, bx0 - x : bx1 - x] = block[
                    by0 - cy * c : by1 - cy * c, bx0 - cx * c : bx1 - cx * c
                ]
        return out

    def _chunk(self, slide: Slide, level: int, cx: int, cy: int) -> np.ndarray:
        c = slide.reader.chunk
        key = (slide.id, slide.rev, level, cx, cy)
        return self.chunks.get_or_compute(
            key, lambda: slide.reader.read_region(level, cx * c, cy * c, c, c)
        )

    def clear(self) -> None:
        self.tiles.clear()
        self.chunks.clear()
