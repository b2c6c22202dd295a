"""Which slides the viewer serves: discovery under the configured roots, ids, and freshness.

A slide is a directory holding slide.ome.zarr (docs/CONTRACTS.md). Nothing outside the roots is
ever reachable: ids map to directories found by walking the roots without following symbolic
links, and files inside a slide directory are served only if they resolve to inside it.
Slides still being generated (attrs gigagen.status == "generating") are re-opened at most once
per refresh interval so status changes show up; finished slides are opened once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gigagen.errors import UserError
from gigagen.io.dzi import DZI_NAME, DziPack, attrs_digest, open_pack
from gigagen.io.omezarr import SlideReader, open_slide
from gigagen.io.deepzoom import DeepZoomGeometry

log = logging.getLogger("gigagen.viewer")

ZARR_NAME = "slide.ome.zarr"
LAYOUT_NAME = "layout.png"
RUN_NAME = "run.json"
MAX_RUN_JSON_BYTES = 8 * 1024 * 1024
PACK_RECHECK_S = 2.0  # how often a finished slide without a usable slide.dzi.zip looks again
_MAX_DEPTH = 6  # how deep below a root to look for slide directories
_MAX_DIRS = 20000  # directories visited per root and scan, so a huge tree cannot stall a scan
_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Slide:
    """One servable slide: an open reader plus everything derived from its attributes."""

    id: str
    directory: Path  # resolved slide directory (parent of slide.ome.zarr)
    zarr_path: Path
    reader: SlideReader
    geometry: DeepZoomGeometry
    rev: str  # digest of the attributes: changes when the slide is rewritten or finished
    attrs_mtime: float
    checked_at: float = field(default_factory=time.monotonic)
    _pack: DziPack | None = field(default=None, repr=False)
    _pack_checked: float = field(default=-PACK_RECHECK_S, repr=False)
    _pack_seen: tuple[int, int] | None = field(default=None, repr=False)
    _pack_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.reader.attrs.get("gigagen")
        return meta if isinstance(meta, dict) else {}

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "complete"))

    @property
    def complete(self) -> bool:
        """True once the generator marked the slide finished: its pixels never change again."""
        return self.status == "complete"

    @property
    def name(self) -> str:
        return self.directory.name

    def pack(self) -> DziPack | None:
        """The slide's pre-encoded Deep Zoom pack, if finished and the pack matches it.

        The pack is written after the slide is marked complete, so a missing one is looked for
        again every few seconds (one stat; a file that did not change is not re-read); a usable
        one stays open.
        """
        if self._pack is not None or not self.complete:
            return self._pack
        now = time.monotonic()
        if now - self._pack_checked < PACK_RECHECK_S:
            return None
        with self._pack_lock:  # one opener; concurrent first requests wait for it
            if self._pack is not None or now - self._pack_checked < PACK_RECHECK_S:
                return self._pack
            self._pack_checked = now
            path = self.directory / DZI_NAME
            try:
                st = path.stat()
                seen = (st.st_mtime_ns, st.st_size)
            except OSError:
                seen = None
            if seen is not None and seen != self._pack_seen:
                self._pack_seen = seen
                self._pack = open_pack(path, self.rev, self.geometry)
        return self._pack

    def created(self) -> str | None:
        for key in ("created", "created_at", "started", "started_at"):
            if isinstance(self.meta.get(key), str):
                return self.meta[key]
        try:
            stamp = (self.zarr_path / ".zgroup").stat().st_mtime
        except OSError:
            return None
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")

    def side_file(self, name: str) -> Path | None:
        """layout.png / run.json of this slide if it is a regular file inside the directory."""
        path = self.directory / name
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved.parent != self.directory or not resolved.is_file():
            return None
        return resolved

    def run_config(self) -> tuple[Any, str | None]:
        """(parsed run.json or None, error message or None)."""
        path = self.side_file(RUN_NAME)
        if path is None:
            return None, None
        try:
            if path.stat().st_size > MAX_RUN_JSON_BYTES:
                return None, f"{RUN_NAME} is larger than {MAX_RUN_JSON_BYTES} bytes"
            return json.loads(path.read_text(encoding="utf-8")), None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return None, f"{RUN_NAME} is unreadable: {exc}"


def slugify(name: str) -> str:
    slug = _SLUG_BAD.sub("-", name).strip("-._")[:64]
    return slug or "slide"


def _zattrs_mtime(zarr_path: Path) -> float:
    try:
        return (zarr_path / ".zattrs").stat().st_mtime
    except OSError:
        return -1.0


def _is_store(path: Path) -> bool:
    return (path / ".zattrs").is_file() and (path / ".zgroup").is_file()


def _walk_slide_dirs(root: Path) -> Iterator[Path]:
    """Slide directories under root (breadth first, no symlinks followed, never into a store)."""
    frontier, visited = [(root, 0)], 0
    while frontier and visited < _MAX_DIRS:
        directory, depth = frontier.pop(0)
        visited += 1
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        names = {e.name for e in entries}
        if ZARR_NAME in names:
            yield directory
            continue
        if depth >= _MAX_DEPTH:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(".zarr"):
                continue
            if entry.is_dir(follow_symlinks=False):
                frontier.append((Path(entry.path), depth + 1))


def find_slides(root: Path) -> list[tuple[Path, Path]]:
    """(slide directory, its store) pairs under root; root may itself be a slide or a store."""
    if root.name == ZARR_NAME and _is_store(root):
        return [(root.parent, root)]
    if _is_store(root):  # another OME-Zarr store given explicitly: it is its own directory
        return [(root, root)]
    return [(d, d / ZARR_NAME) for d in _walk_slide_dirs(root)]


def _slide_root(path: Path) -> Path:
    return path.parent if path.name == ZARR_NAME and _is_store(path) else path


class SlideRegistry:
    """Thread-safe map of slide id -> Slide over the roots, rescanned at most every interval."""

    def __init__(
        self,
        roots: Sequence[Path],
        tile_size: int = 256,
        overlap: int = 0,
        rescan_interval: float = 2.0,
        refresh_interval: float = 1.0,
    ) -> None:
        # A store named directly stands for its slide directory (where layout.png and run.json are).
        self.roots = [_slide_root(Path(r).resolve()) for r in roots]
        self.tile_size, self.overlap = tile_size, overlap
        self.rescan_interval, self.refresh_interval = rescan_interval, refresh_interval
        self._slides: dict[str, Slide] = {}
        self._ids_by_dir: dict[Path, str] = {}  # keeps ids stable across rescans
        self._lock = threading.RLock()
        self._scanned_at: float | None = None

    def _inside_roots(self, path: Path) -> bool:
        return any(path == r or path.is_relative_to(r) for r in self.roots)

    def _open(self, slide_id: str, directory: Path, zarr_path: Path) -> Slide | None:
        mtime = _zattrs_mtime(zarr_path)
        try:
            reader = open_slide(zarr_path)
            geometry = DeepZoomGeometry(reader.level_shapes, self.tile_size, self.overlap)
        except (UserError, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
            log.warning("skipping %s: %s", zarr_path, exc)
            return None
        return Slide(slide_id, directory, zarr_path, reader, geometry,
                     attrs_digest(reader.attrs), mtime)

    def _new_id(self, directory: Path) -> str:
        base = slugify(directory.name)
        taken = set(self._ids_by_dir.values())
        slide_id, n = base, 2
        while slide_id in taken:
            slide_id, n = f"{base}-{n}", n + 1
        return slide_id

    def rescan(self, force: bool = False) -> None:
        """Pick up new, changed and removed slides (no-op if scanned within the interval)."""
        with self._lock:
            now = time.monotonic()
            if not force and self._scanned_at is not None and now - self._scanned_at < self.rescan_interval:
                return
            self._scanned_at = now
            found: dict[str, Slide] = {}
            for root in self.roots:
                for directory, zarr_path in find_slides(root):
                    slide = self._scan_one(directory, zarr_path)
                    if slide is not None and slide.id not in found:
                        found[slide.id] = slide
            self._slides = found

    def _scan_one(self, directory: Path, zarr_path: Path) -> Slide | None:
        try:
            directory, zarr_path = directory.resolve(strict=True), zarr_path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not (self._inside_roots(directory) and self._inside_roots(zarr_path)):
            log.warning("skipping %s: it links outside the served roots", directory)
            return None
        slide_id = self._ids_by_dir.get(directory)
        if slide_id is None:
            slide_id = self._new_id(directory)
            self._ids_by_dir[directory] = slide_id
        old = self._slides.get(slide_id)
        if old is not None and old.attrs_mtime == _zattrs_mtime(zarr_path):
            return old
        return self._open(slide_id, directory, zarr_path)

    def slides(self) -> list[Slide]:
        self.rescan()
        with self._lock:
            return [self._fresh(s) for s in self._slides.values()]

    def get(self, slide_id: str) -> Slide:
        """The slide with this id, re-read if it is still being generated; KeyError if none."""
        with self._lock:
            slide = self._slides.get(slide_id)
        if slide is None:
            self.rescan(force=self._scanned_at is None)
            with self._lock:
                slide = self._slides.get(slide_id)
            if slide is None:
                raise KeyError(slide_id)
        return self._fresh(slide)

    def _fresh(self, slide: Slide) -> Slide:
        """A generating slide's attributes and status may change: re-open it now and then."""
        if slide.complete or time.monotonic() - slide.checked_at < self.refresh_interval:
            return slide
        reopened = self._open(slide.id, slide.directory, slide.zarr_path)
        if reopened is None:
            slide.checked_at = time.monotonic()
            return slide
        with self._lock:
            if self._slides.get(slide.id) is slide:
                self._slides[slide.id] = reopened
        return reopened
