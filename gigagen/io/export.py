"""Export a slide store to TIFF files, atomically, and describe a slide directory (`gigagen info`).

Files appear under their final name only when complete: each is written under a hidden
temporary name in the same directory and renamed, so an interrupted export never leaves a
truncated slide.ome.tif that a viewer would open.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tifffile

from gigagen.errors import UserError
from gigagen.io.dzi import DZI_NAME, pack_tile_count, write_dzi_zip
from gigagen.io.omezarr import ZARR_NAME, SlideReader, open_slide
from gigagen.io.tiff import TiffOptions, default_workers, write_generic_tiff, write_ome_tiff
from gigagen.io.tiles import level_tile_count


def _write_dzi(reader: SlideReader, path: Path, opts: TiffOptions, on_tile: Callable[[], None]) -> None:
    write_dzi_zip(reader, path, opts.quality, on_tile)  # always JPEG, at --quality


# format name -> (file name, writer)
FORMATS: dict[str, tuple[str, Callable[[SlideReader, Path, TiffOptions, Callable[[], None]], None]]] = {
    "ome-tiff": ("slide.ome.tif", write_ome_tiff),
    "tiff": ("slide.tif", write_generic_tiff),
    "dzi": (DZI_NAME, _write_dzi),  # pre-encoded Deep Zoom tiles for `gigagen serve` / static hosting
}


@contextmanager
def atomic_path(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it to `final` only if the block succeeds.

    UserError if final exists and overwrite is False. The temporary file is removed on error.
    """
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; pass --overwrite to replace it")
    # keep the real suffix last so tools that sniff extensions still recognise a stray temp file
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        os.replace(tmp, final)  # atomic on POSIX within one filesystem
    finally:
        tmp.unlink(missing_ok=True)


def parse_formats(formats: Sequence[str] | str) -> list[str]:
    """"ome-tiff,tiff" or ["ome-tiff", "tiff"] -> validated, de-duplicated list."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [f.strip().lower() for f in items if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise UserError(f"unknown export format {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def export_slide(
    slide_dir: Path,
    formats: Sequence[str] = ("ome-tiff",),
    compression: str = "jpeg",
    quality: int = 90,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    tile: int = 512,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write the slide's TIFF files from its slide.ome.zarr -> {format name: written path}.

    progress(format, tiles_done, tiles_total) is called after each tile of each format.
    UserError for an unknown format or compression, an existing output without overwrite,
    or a slide still being generated (unless allow_incomplete).
    """
    slide_dir = Path(slide_dir)
    names = parse_formats(formats)
    opts = TiffOptions(compression=compression.lower(), quality=quality, tile=tile,
                       workers=workers or default_workers())
    opts.validate()
    reader = open_slide(slide_dir)
    status = reader.attrs.get("gigagen", {}).get("status")
    if status != "complete" and not allow_incomplete:
        raise UserError(f"{reader.path} is not complete (status {status!r}); "
                        "finish generating it first")
    out_dir = reader.path.parent
    for name in names:  # refuse before writing anything
        if (out_dir / FORMATS[name][0]).exists() and not overwrite:
            raise UserError(f"{out_dir / FORMATS[name][0]} already exists; pass --overwrite to replace it")
    written: dict[str, Path] = {}
    for name in names:
        filename, writer = FORMATS[name]
        total = pack_tile_count(reader) if name == "dzi" else level_tile_count(reader, opts.tile)
        done = [0]

        def on_tile(name: str = name, done: list[int] = done, total: int = total) -> None:
            done[0] += 1
            if progress is not None:
                progress(name, done[0], total)

        with atomic_path(out_dir / filename, overwrite) as tmp:
            writer(reader, tmp, opts, on_tile)
        written[name] = out_dir / filename
    return written


def tiff_summary(path: Path) -> dict[str, Any]:
    """Levels, compression and size of a written TIFF, read back with tifffile."""
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        page = tf.pages[0]
        levels = [list(lvl.shape[:2]) for lvl in series.levels]
        return {
            "path": str(path),
            "bytes": path.stat().st_size,
            "compression": page.compression.name.lower(),
            "photometric": page.photometric.name.lower(),
            "tile": [page.tilelength, page.tilewidth],
            "levels": levels,
            "ome": tf.is_ome,
            "bigtiff": tf.is_bigtiff,
        }


def dzi_summary(path: Path) -> dict[str, Any]:
    """Tile count, quality and whether the pack still matches its slide (`gigagen info`)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("gigagen.json"))
            tiles = sum(1 for n in zf.namelist() if n.startswith("slide_files/"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return {"path": str(path), "bytes": path.stat().st_size, "error": f"unreadable: {exc}"}
    return {"path": str(path), "bytes": path.stat().st_size, "tiles": tiles,
            "quality": meta.get("quality"), "tile": meta.get("tile_size"), "rev": meta.get("rev")}


def slide_info(slide_dir: Path) -> dict[str, Any]:
    """Everything `gigagen info` shows: size, levels, pixel size, storage, provenance, run config."""
    reader = open_slide(slide_dir)
    meta = dict(reader.attrs.get("gigagen", {}))
    level0 = reader.levels[0]
    compressor = getattr(level0.metadata, "compressor", None)
    info: dict[str, Any] = {
        "path": str(reader.path.parent if reader.path.name == ZARR_NAME else reader.path),
        "width": reader.width,
        "height": reader.height,
        "mpp": reader.mpp,
        "magnification": round(10.0 / reader.mpp, 3),
        "levels": [
            {"level": k, "width": w, "height": h, "mpp": reader.level_mpp(k)}
            for k, (h, w) in enumerate(reader.level_shapes)
        ],
        "zarr": {"chunks": list(level0.chunks),
                 "compressor": compressor.get_config() if compressor is not None else None},
        "synthetic": bool(meta.get("synthetic", False)),
        "status": meta.get("status"),
        "gigagen": meta,
        "exports": {},
        "run": None,
    }
    out_dir = reader.path.parent
    for name, (filename, _) in FORMATS.items():
        path = out_dir / filename
        if path.is_file():
            info["exports"][name] = dzi_summary(path) if name == "dzi" else tiff_summary(path)
    info["run"] = _read_run_json(out_dir / "run.json")
    return info


def _read_run_json(path: Path) -> dict[str, Any] | None:
    """run.json of the slide, or None if absent; UserError if present but unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from exc
