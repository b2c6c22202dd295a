"""A finished slide's Deep Zoom pyramid, pre-encoded into one zip file (slide.dzi.zip).

Why: a tile server that reads a zlib chunk and JPEG-encodes every tile it has not seen spends
~2-3 ms of CPU per tile; a pre-encoded tile costs one pread. `gigagen slide` writes the pack
once, after the pyramid, and `gigagen serve` sends its bytes unchanged for finished slides
(slides still being generated, PNG tiles and other tilings are rendered from the OME-Zarr).

Layout (the one `vips dzsave --container zip` uses, so `unzip` gives a static DZI site that
OpenSeadragon opens without any server):
    slide.dzi                         the DZI descriptor
    slide_files/LEVEL/COL_ROW.jpeg    tiles, 256 px, no overlap, stored (not deflated)
    gigagen.json                      {rev, quality, tile_size, overlap, format, width, height}
Tiles are made by gigagen.io.deepzoom.render_tile, the same function the viewer renders with,
so a pack tile is byte-identical to the tile the server would encode at the pack's quality.
"rev" is the digest of the slide's attributes when the pack was written: a pack whose slide
was rewritten since is stale and ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigagen.io.deepzoom import DeepZoomGeometry, render_tile
from gigagen.io.omezarr import SlideReader

log = logging.getLogger("gigagen.dzi")

DZI_NAME = "slide.dzi.zip"
DZI_TILE = 256  # the viewer's default TileSize; tiles stay inside one 512-px zarr chunk
META_NAME = "gigagen.json"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes


def attrs_digest(attrs: dict[str, Any]) -> str:
    """Revision of a slide: changes whenever its attributes do (rewritten, finished)."""
    text = json.dumps(attrs, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def tile_name(level: int, col: int, row: int) -> str:
    return f"slide_files/{level}/{col}_{row}.jpeg"


def tile_order(geometry: DeepZoomGeometry, chunk: int) -> Iterator[tuple[int, int, int]]:
    """Every (level, col, row), finest level first, grouped by the stored chunk a tile lies in,
    so one decoded chunk feeds all its tiles before the next is read."""
    per = max(1, chunk // geometry.tile_size)
    for level in range(geometry.max_level, -1, -1):
        cols, rows = geometry.dz_tiles[level]
        for r0 in range(0, rows, per):
            for c0 in range(0, cols, per):
                for row in range(r0, min(r0 + per, rows)):
                    for col in range(c0, min(c0 + per, cols)):
                        yield level, col, row


class _ChunkCache:
    """read_region through the last decoded chunk: tiles of one chunk decode it once."""

    def __init__(self, reader: SlideReader) -> None:
        self.reader, self.c = reader, reader.chunk
        self.key: tuple[int, int, int] | None = None
        self.block = np.zeros((0, 0, 3), np.uint8)

    def read(self, k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        c = self.c
        cx, cy = x // c, y // c
        if (x + w - 1) // c != cx or (y + h - 1) // c != cy:  # spans chunks (resampled coarse tiles)
            return self.reader.read_region(k, x, y, w, h)
        if self.key != (k, cx, cy):
            self.block = self.reader.read_region(k, cx * c, cy * c, c, c)
            self.key = (k, cx, cy)
        return self.block[y - cy * c : y - cy * c + h, x - cx * c : x - cx * c + w]


def pack_tile_count(reader: SlideReader) -> int:
    g = DeepZoomGeometry(reader.level_shapes, DZI_TILE, 0)
    return sum(cols * rows for cols, rows in g.dz_tiles)


def write_dzi_zip(reader: SlideReader, path: Path, quality: int,
                  on_tile: Callable[[], None] | None = None) -> None:
    """Write the slide's Deep Zoom pack to `path` (the caller renames it into place)."""
    g = DeepZoomGeometry(reader.level_shapes, DZI_TILE, 0)
    cache = _ChunkCache(reader)
    meta = {"rev": attrs_digest(reader.attrs), "quality": quality, "tile_size": DZI_TILE, "overlap": 0,
            "format": "jpeg", "width": g.width, "height": g.height}
    # allowZip64: packs of big slides pass 4 GB and 65535 members
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr("slide.dzi", g.dzi_xml("jpeg"))
        zf.writestr(META_NAME, json.dumps(meta))
        for level, col, row in tile_order(g, reader.chunk):
            zf.writestr(tile_name(level, col, row), render_tile(cache.read, g, level, col, row, "jpeg", quality))
            if on_tile is not None:
                on_tile()


@dataclass
class DziPack:
    """Read side of a pack: tiles by pread at offsets found once per tile (thread-safe, no lock)."""

    path: Path
    quality: int
    zf: zipfile.ZipFile
    fd: int

    def __post_init__(self) -> None:
        self._spans: dict[str, tuple[int, int]] = {}

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """The stored JPEG of a tile, or None if the pack lacks it (or it is damaged)."""
        name = tile_name(level, col, row)
        span = self._spans.get(name)
        if span is None:
            span = self._locate(name)
            if span is None:
                return None
            self._spans[name] = span
        offset, size = span
        data = os.pread(self.fd, size, offset)
        return data if len(data) == size else None

    def _locate(self, name: str) -> tuple[int, int] | None:
        info = self.zf.NameToInfo.get(name)
        if info is None or info.compress_type != zipfile.ZIP_STORED:
            return None
        head = os.pread(self.fd, _LOCAL_HEADER.size, info.header_offset)
        if len(head) != _LOCAL_HEADER.size:
            return None
        fields = _LOCAL_HEADER.unpack(head)
        if fields[0] != b"PK\x03\x04":
            return None
        name_len, extra_len = fields[-2], fields[-1]
        return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len, info.compress_size

    def close(self) -> None:
        self.zf.close()
        os.close(self.fd)


def open_pack(path: Path, rev: str, geometry: DeepZoomGeometry) -> DziPack | None:
    """The pack at `path` if it exists and matches this slide revision and tiling, else None.

    A damaged or stale pack is logged and ignored (tiles are then rendered from the zarr).
    """
    if not path.is_file():
        return None
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    try:
        meta = json.loads(zf.read(META_NAME))
        want = {"rev": rev, "tile_size": geometry.tile_size, "overlap": geometry.overlap, "format": "jpeg",
                "width": geometry.width, "height": geometry.height}
        diff = {k: meta.get(k) for k in want if meta.get(k) != want[k]}
        if diff or not isinstance(meta.get("quality"), int):
            log.info("not using %s (does not match the slide or tiling: %s)", path, diff)
            zf.close()
            return None
        return DziPack(path, int(meta["quality"]), zf, os.open(path, os.O_RDONLY))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        zf.close()
        return None
