"""OME-Zarr slide store: NGFF 0.4 on zarr format 2, the source of truth of a generated slide.

Layout (docs/CONTRACTS.md): arrays "0", "1", ... of uint8 (3, H_k, W_k), H_k = ceil(H_0 / 2^k),
chunks (3, 512, 512), down to the first level whose longer side is <= min_level_size. Every
array and all metadata exist from the start (fill 255 = white glass) so a viewer can open a
slide while it is being generated. Compressor zlib and "/" chunk keys because QuPath's Java
zarr reader decodes zlib in pure Java (blosc needs a native library there) and zarr-python 3's
default zstd not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from gigagen import __version__
from gigagen.errors import UserError
from gigagen.io.chunks import fast_chunk_dir, read_block

ZARR_NAME = "slide.ome.zarr"
FILL = 255
_CHANNELS = (("Red", "FF0000"), ("Green", "00FF00"), ("Blue", "0000FF"))


def level_shapes_for(width: int, height: int, min_level_size: int = 256) -> list[tuple[int, int]]:
    """(h, w) of every pyramid level: halve (rounding up) until the longer side <= min_level_size."""
    shapes = [(height, width)]
    while max(shapes[-1]) > min_level_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def multiscales_attrs(n_levels: int, mpp: float, name: str = "slide") -> list[dict[str, Any]]:
    """NGFF 0.4 "multiscales": axes c/y/x, micrometer scale mpp * 2^k per level."""
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, mpp * 2**k, mpp * 2**k]}],
        }
        for k in range(n_levels)
    ]
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
            "type": "mean",
            "metadata": {"method": "2x2 box mean", "generator": "gigagen"},
        }
    ]


def omero_attrs(name: str = "slide") -> dict[str, Any]:
    """"omero" block with Red/Green/Blue channels so QuPath treats the (c, y, x) image as RGB."""
    window = {"start": 0, "end": 255, "min": 0, "max": 255}
    channels = [
        {"label": label, "color": color, "window": dict(window), "active": True,
         "coefficient": 1.0, "family": "linear", "inverted": False}
        for label, color in _CHANNELS
    ]
    return {"id": 1, "name": name, "version": "0.4", "channels": channels,
            "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0}}


def _compressor() -> numcodecs.abc.Codec:
    # level 1: the engine writes every chunk once; speed matters more than a few % of size.
    return numcodecs.Zlib(level=1)


def create_slide(
    zarr_path: str | Path,
    width: int,
    height: int,
    mpp: float,
    attrs: dict[str, Any],
    chunk: int = 512,
    min_level_size: int = 256,
) -> SlideWriter:
    """Create an empty slide store with every level and all metadata; UserError if it exists.

    attrs: extra entries for the "gigagen" attribute (seed, model, run config, ...).
    """
    path = Path(zarr_path)
    if path.exists():
        raise UserError(f"{path} already exists; choose another output or remove it")
    if width < 1 or height < 1:
        raise UserError(f"slide size must be positive, got {width}x{height}")
    if not mpp > 0:
        raise UserError(f"pixel size must be positive, got {mpp} um")
    shapes = level_shapes_for(width, height, min_level_size)
    group = zarr.open_group(str(path), mode="w-", zarr_format=2)
    for k, (h, w) in enumerate(shapes):
        group.create_array(
            str(k),
            shape=(3, h, w),
            dtype="uint8",
            chunks=(3, chunk, chunk),
            compressors=[_compressor()],
            fill_value=FILL,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    # generator and synthetic come last: nothing a caller passes can make a slide look real
    gigagen = {"version": __version__, "seed": None, "model": None, **attrs,
               "generator": "gigagen", "synthetic": True,
               "width": width, "height": height, "mpp": mpp, "status": "generating"}
    group.attrs.update({"multiscales": multiscales_attrs(len(shapes), mpp),
                        "omero": omero_attrs(), "gigagen": gigagen})
    return SlideWriter(group)


def _zarr_path(path: str | Path) -> Path:
    """The slide.ome.zarr of a slide directory, or path itself if it is the store."""
    path = Path(path)
    if (path / ZARR_NAME).is_dir():
        return path / ZARR_NAME
    if (path / ".zattrs").is_file():
        return path
    raise UserError(f"{path} is not a gigagen slide (no {ZARR_NAME} and no OME-Zarr attributes)")


def open_writer(path: str | Path) -> SlideWriter:
    """Reopen an existing slide store for writing (resume, or one writer per worker process)."""
    return SlideWriter(zarr.open_group(str(_zarr_path(path)), mode="r+", zarr_format=2))


def downsample2(src: np.ndarray) -> np.ndarray:
    """2x2 box mean, rounded. src: (C, h, w) uint8 -> (C, ceil(h/2), ceil(w/2)) uint8.

    An odd last row/column is replicated, i.e. the edge output pixel averages only the
    source pixels that exist.
    """
    c, h, w = src.shape
    if h % 2 or w % 2:
        src = np.pad(src, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    s = src.astype(np.uint16)
    total = s[:, 0::2, 0::2] + s[:, 1::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


class SlideWriter:
    """Writes level-0 tiles into a slide store, then builds the pyramid and marks it complete."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.n_levels = len(group.attrs["multiscales"][0]["datasets"])
        self.levels = [group[str(k)] for k in range(self.n_levels)]
        self.chunk = int(self.levels[0].chunks[1])

    @property
    def path(self) -> Path:
        return Path(str(self.group.store.root)) / self.group.path

    @property
    def level0(self) -> zarr.Array:
        """Level-0 array, (3, H, W) uint8."""
        return self.levels[0]

    def write_tile(self, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write rgb: (3, h, w) uint8 at level 0 with its top-left at (y0, x0).

        (y0, x0) must lie on the chunk grid and h, w be multiples of the chunk size unless the
        tile reaches the slide's edge, so every chunk is written whole and no neighbour is
        read. Parts beyond the slide are dropped (the engine may decode whole tiles at edges).
        """
        _, height, width = self.level0.shape
        c = self.chunk
        if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"tile must be (3, h, w) uint8, got {rgb.shape} {rgb.dtype}")
        if y0 % c or x0 % c or not (0 <= y0 < height and 0 <= x0 < width):
            raise ValueError(f"tile origin ({y0}, {x0}) is not on the {c}-pixel chunk grid")
        h = min(rgb.shape[1], height - y0)
        w = min(rgb.shape[2], width - x0)
        if (h % c and y0 + h < height) or (w % c and x0 + w < width):
            raise ValueError(f"tile {rgb.shape[1:]} at ({y0}, {x0}) would write partial chunks")
        self.level0[:, y0 : y0 + h, x0 : x0 + w] = rgb[:, :h, :w]

    def pyramid_chunk_count(self) -> int:
        """Number of chunks build_pyramid writes (levels 1..n), for a progress total."""
        return sum(len(list(_chunk_grid(a.shape[1:], self.chunk))) for a in self.levels[1:])

    def build_pyramid(self, progress: Callable[[int], None] | None = None) -> None:
        """Fill levels 1..n from level 0 by 2x2 means, one output chunk at a time.

        Memory holds one (3, 2*chunk, 2*chunk) source block, whatever the slide's size.
        progress(n) is called after each chunk with n = chunks just written (tqdm.update style).
        """
        for k in range(1, self.n_levels):
            self.build_level(k, progress)

    def build_level(
        self,
        k: int,
        progress: Callable[[int], None] | None = None,
        region: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Rebuild level k from level k-1, optionally only the chunks meeting region.

        region: (y0, x0, y1, x1) in level-k pixels; None = the whole level.
        """
        src, dst = self.levels[k - 1], self.levels[k]
        c = self.chunk
        for y0, x0, y1, x1 in _chunk_grid(dst.shape[1:], c, region):
            block = src[:, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
            dst[:, y0:y1, x0:x1] = downsample2(np.asarray(block))
            if progress is not None:
                progress(1)

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Merge extra_attrs into the "gigagen" attributes and set status "complete"."""
        attrs = dict(self.group.attrs["gigagen"])
        attrs.update(extra_attrs or {})
        attrs["status"] = "complete"
        self.group.attrs["gigagen"] = attrs


def _chunk_grid(
    shape: tuple[int, ...], chunk: int, region: tuple[int, int, int, int] | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of every chunk of a (h, w) array, clipped to it, meeting region."""
    h, w = shape
    ry0, rx0, ry1, rx1 = region if region is not None else (0, 0, h, w)
    for y0 in range((max(ry0, 0) // chunk) * chunk, min(ry1, h), chunk):
        for x0 in range((max(rx0, 0) // chunk) * chunk, min(rx1, w), chunk):
            yield y0, x0, min(y0 + chunk, h), min(x0 + chunk, w)


class SlideReader:
    """Read-only view of a slide store: geometry, metadata and clipped region reads."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self.group = group
        self.path = path
        self.attrs: dict[str, Any] = dict(group.attrs)
        datasets = self.attrs["multiscales"][0]["datasets"]
        self.levels = [group[d["path"]] for d in datasets]
        self.level_shapes = [(int(a.shape[1]), int(a.shape[2])) for a in self.levels]
        self.height, self.width = self.level_shapes[0]
        meta = self.attrs.get("gigagen", {})
        scale = datasets[0]["coordinateTransformations"][0]["scale"]
        self.mpp = float(meta.get("mpp", scale[-1]))
        self._fast_dirs = [fast_chunk_dir(a) for a in self.levels]

    @property
    def chunk(self) -> int:
        return int(self.levels[0].chunks[1])

    def level_mpp(self, level: int) -> float:
        return self.mpp * 2**level

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of level `level` in [x, x+w) x [y, y+h), clipped to the level -> (h', w', 3) uint8.

        ValueError for a level that does not exist or a region entirely outside the level.
        """
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} does not exist (0..{len(self.levels) - 1})")
        lh, lw = self.level_shapes[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"region ({x}, {y}, {w}, {h}) lies outside level {level} ({lw}x{lh})")
        arr, fast_dir = self.levels[level], self._fast_dirs[level]
        if fast_dir is not None:
            fill = int(arr.fill_value) if arr.fill_value is not None else 0
            return read_block(fast_dir, arr.shape, arr.chunks, fill, y0, x0, y1, x1)
        block = np.asarray(arr[:, y0:y1, x0:x1])
        out = np.empty((y1 - y0, x1 - x0, block.shape[0]), dtype=np.uint8)
        for k in range(block.shape[0]):  # per-channel copies: ~5x faster than a transposed copy
            out[..., k] = block[k]
        return out


def open_slide(path: str | Path) -> SlideReader:
    """Open a slide directory, or its slide.ome.zarr, for reading; UserError if it is not one."""
    zpath = _zarr_path(path)
    try:
        group = zarr.open_group(str(zpath), mode="r", zarr_format=2)
        reader = SlideReader(group, zpath)
    except (KeyError, IndexError, TypeError, ValueError, FileNotFoundError) as exc:
        raise UserError(f"{zpath} is not a readable OME-Zarr slide ({exc})") from exc
    return reader
