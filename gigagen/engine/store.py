"""Where a level's latent state lives between denoising steps.

State k of a level is its latent after k DDIM steps (state 0 is the starting noise x_T, a pure
function of the seed). Two stores keep it:

- MemoryStore: one numpy canvas updated in place (grid-shift tiles are disjoint, so a tile's
  input is never overwritten by another tile of the same step); after each step it can save the
  canvas as one .npy checkpoint for --resume.
- DiskStore: every tile of step k is its own small .npy file under ROOT/L{level}/s{k}/, written
  atomically and idempotently. A region of state k is assembled from the files of the tiles that
  covered it in step k-1 (the geometry is a pure function of the seed), so nothing holds a whole
  level, concurrent workers never write the same file, and a retried task rewrites identical bytes.
  ROOT is a local path or an fsspec URL that every worker can reach.

Both record the last committed step in ROOT/L{level}/state.json, the resume point.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigagen.engine.grid import Tile, Tiling, overlapping, step_segments
from gigagen.engine.noise import INITIAL, gaussian_region


def _is_url(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def _local(root: str) -> str:
    return root[len("file://") :] if root.startswith("file://") else root


def put_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: a reader sees the old file, no file, or the new file."""
    if _is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        fs.pipe_file(p, data)  # object stores put whole objects atomically
        return
    path = _local(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def get_bytes(path: str) -> bytes | None:
    """Whole file contents, or None when it does not exist."""
    if _is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return fs.cat_file(p) if fs.exists(p) else None
    try:
        with open(_local(path), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def remove_tree(path: str) -> None:
    if _is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    else:
        shutil.rmtree(_local(path), ignore_errors=True)


def array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def bytes_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class LevelSpec:
    """Everything that fixes a level's geometry and starting noise; small enough to send to workers."""

    level: int
    shape: tuple[int, int]  # latent (height, width)
    channels: int
    seed: int
    tiling: Tiling
    # conditioning augmentation: the parent level is read as sqrt(1 - s^2) parent + s noise, the noise a
    # function of (seed, level, position) like every other noise here (0 = the parent as it is)
    cond_noise: float = 0.0

    def segments(self, step: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        t = self.tiling
        return step_segments(self.shape, t.tile, t.mode, seed=self.seed, level=self.level, step=step, divisor=t.divisor, stride=t.stride)


class StateView:
    """Read-only array-like view of one state of a store: `view[:, y0:y1, x0:x1]` and `view.shape`."""

    def __init__(self, store: "MemoryStore | DiskStore", state: int) -> None:
        self.store, self.state = store, state
        self.shape = (store.spec.channels, *store.spec.shape)

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        _, ys, xs = key
        y0, y1, _ = ys.indices(self.shape[1])
        x0, x1, _ = xs.indices(self.shape[2])
        return self.store.read(self.state, y0, y1, x0, x1)


class _Marker:
    """ROOT/L{level}/state.json: {"completed": k} once state k is fully written."""

    def __init__(self, root: str, level: int) -> None:
        self.dir = f"{root.rstrip('/')}/L{level}"
        self.path = f"{self.dir}/state.json"

    def completed(self) -> int:
        data = get_bytes(self.path)
        if data is None:
            return 0
        try:
            k = json.loads(data)["completed"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"corrupt latent state marker {self.path}") from None
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"corrupt latent state marker {self.path}")
        return k

    def commit(self, k: int) -> None:
        put_bytes(self.path, json.dumps({"completed": k}).encode())


class MemoryStore:
    """A level's latent as one in-memory canvas (C, H, W); optional per-step checkpoint on disk."""

    def __init__(self, spec: LevelSpec, checkpoint_root: str | None = None) -> None:
        self.spec = spec
        self.marker = _Marker(checkpoint_root, spec.level) if checkpoint_root else None
        self.state = self.marker.completed() if self.marker else 0
        if self.state:
            data = get_bytes(self._checkpoint_path())
            if data is None:
                raise ValueError(f"latent checkpoint {self._checkpoint_path()} is missing")
            self.canvas = bytes_array(data)
            if self.canvas.shape != (spec.channels, *spec.shape):
                raise ValueError(f"latent checkpoint {self._checkpoint_path()} has the wrong shape")
        else:
            h, w = spec.shape
            self.canvas = gaussian_region(spec.seed, spec.level, INITIAL, 0, h, 0, w, spec.channels)

    def _checkpoint_path(self) -> str:
        assert self.marker is not None
        return f"{self.marker.dir}/latent.npy"

    def completed(self) -> int:
        return self.state

    def read(self, k: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if k != self.state:
            raise ValueError(f"memory store holds state {self.state}, not {k}")
        return self.canvas[:, y0:y1, x0:x1].copy()

    def write(self, k: int, tile: Tile, data: np.ndarray) -> None:
        self.canvas[:, tile.y0 : tile.y1, tile.x0 : tile.x1] = data

    def commit(self, k: int) -> None:
        self.state = k
        if self.marker:
            put_bytes(self._checkpoint_path(), array_bytes(self.canvas))
            self.marker.commit(k)

    def view(self, k: int) -> StateView:
        return StateView(self, k)


class DiskStore:
    """A level's latent as one file per tile per step under ROOT/L{level}/s{k:04d}/ (see module doc)."""

    def __init__(self, spec: LevelSpec, root: str) -> None:
        if spec.tiling.mode == "overlap":
            raise ValueError("--blend overlap keeps its latents in memory; use gridshift or none beyond the memory budget")
        self.spec, self.root = spec, root.rstrip("/")
        self.marker = _Marker(self.root, spec.level)

    def _tile_path(self, k: int, tile: Tile) -> str:
        return f"{self.marker.dir}/s{k:04d}/{tile.y0}_{tile.x0}_{tile.y1}_{tile.x1}.npy"

    def completed(self) -> int:
        return self.marker.completed()

    def read(self, k: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """State k over rows y0:y1, cols x0:x1, assembled from the tiles of step k - 1."""
        s = self.spec
        if k == 0:
            return gaussian_region(s.seed, s.level, INITIAL, y0, y1, x0, x1, s.channels)
        out = np.empty((s.channels, y1 - y0, x1 - x0), dtype=np.float32)
        rows, cols = s.segments(k - 1)
        for a0, a1 in overlapping(rows, y0, y1):
            for b0, b1 in overlapping(cols, x0, x1):
                data = get_bytes(self._tile_path(k, Tile(a0, a1, b0, b1)))
                if data is None:
                    raise ValueError(f"latent tile {self._tile_path(k, Tile(a0, a1, b0, b1))} is missing")
                t = bytes_array(data)
                ya, yb, xa, xb = max(a0, y0), min(a1, y1), max(b0, x0), min(b1, x1)
                out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = t[:, ya - a0 : yb - a0, xa - b0 : xb - b0]
        return out

    def write(self, k: int, tile: Tile, data: np.ndarray) -> None:
        put_bytes(self._tile_path(k, tile), array_bytes(data))

    def commit(self, k: int) -> None:
        """Mark state k complete, then drop state k - 1, which nothing reads any more."""
        self.marker.commit(k)
        if k >= 2:
            remove_tree(f"{self.marker.dir}/s{k - 1:04d}")

    def view(self, k: int) -> StateView:
        return StateView(self, k)


def open_store(spec: LevelSpec, kind: str, root: str | None) -> Any:
    """kind 'memory' (root: optional checkpoint dir) or 'disk' (root required)."""
    if kind == "memory":
        return MemoryStore(spec, root)
    if kind == "disk":
        if root is None:
            raise ValueError("a disk store needs a root")
        return DiskStore(spec, root)
    raise ValueError(f"unknown store kind {kind!r}")
