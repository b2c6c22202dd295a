"""Run configuration: one frozen dataclass, one field per `gigagen slide` flag. No torch here.

The whole RunConfig is written into every slide's run.json, so an output can be reproduced from
its own files.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from gigagen.engine.grid import BLEND_MODES
from gigagen.errors import UserError

# Latent pixels per network call when no batch size is given: 2 tiles of 128^2, 32 of 32^2. Larger calls
# did not run faster on this CPU and took more memory (scripts/bench_batch.py).
CALL_PIXELS = 2 * 128 * 128
FORMATS = ("ome-tiff", "tiff", "dzi")  # the keys of gigagen.io.export.FORMATS (kept import-light)
COMPRESSIONS = ("jpeg", "deflate", "zstd", "lzw", "none")
LAYOUTS = ("sampled", "fragments")


@dataclass(frozen=True)
class RunConfig:
    width: int
    height: int
    out: str
    seed: int
    steps: tuple[int, ...] | None = None  # DDIM steps per level, finest first (or one for all); None = the model's
    eta: float = 0.0
    guidance: tuple[float, ...] | None = None  # CFG weight per refinement level, finest first (or one for all); None = the model's
    autoguidance: float | None = None  # None = the model's own default (1 when it has no guide network)
    cond_aug: int | None = None  # parent noise timestep (conditioning augmentation); None = the model's default
    layout: str | None = None  # "sampled" or "fragments" (of the model's exemplar, engine.layout); None = the model's
    blend: str = "gridshift"
    overlap_stride: int | None = None  # latent pixels; default tile // 2
    tile: int | None = None  # latent tile side; default: the model's training tile
    checkpoint: str | None = None  # None = the embedded default model
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # tiles per network call; None = CALL_PIXELS latent pixels' worth of tiles
    overwrite: bool = False
    formats: tuple[str, ...] = ("ome-tiff", "dzi")
    compression: str = "jpeg"
    quality: int = 90
    tile_order: str = "raster"  # a test knob: results must not depend on it
    resume: bool = False
    memory_budget: int = 256 * 1024**2  # bytes of latent canvases kept in memory; beyond, latents go to disk
    scheduler: str | None = None  # tcp://HOST:PORT of a dask.distributed scheduler
    workers: int = 0  # > 0: start a local dask cluster with this many worker processes
    state_store: str | None = None  # where latent state lives (path or fsspec URL); default SLIDE/.gigagen-state

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bytes(text: str) -> int:
    """'512MB', '2GiB', '1.5G', '1000000' -> bytes; UserError for anything else."""
    units = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
             "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    try:
        value = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise UserError(f"cannot read {text!r} as a size (e.g. 512MB, 2GiB)") from None
    if value < 0:
        raise UserError(f"size must be >= 0, not {text!r}")
    return int(value)


def comma_ints(text: str) -> tuple[int, ...]:
    """'20,60,60' -> (20, 60, 60), as an argparse type (one line on anything else)."""
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None


def comma_floats(text: str) -> tuple[float, ...]:
    """'1,2.5' -> (1.0, 2.5), as an argparse type (one line on anything else)."""
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def per_level(values: tuple, n: int) -> tuple:
    """Per-level settings as given, or one value repeated for each of n levels."""
    return tuple(values) * n if len(values) == 1 else tuple(values)


def default_batch_size(tile: int) -> int:
    """Tiles per network call for a tile side when none is given: CALL_PIXELS latent pixels' worth, at least 1."""
    return max(1, CALL_PIXELS // (tile * tile))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(cfg: RunConfig) -> None:
    """Checks that need no model; raises UserError with one line for the first problem found."""
    for name in ("width", "height", "batch_size"):
        value = getattr(cfg, name)
        if name == "batch_size" and value is None:
            continue
        if not _positive_int(value):
            raise UserError(f"{name.replace('_', '-')} must be a positive integer, not {value!r}")
    if cfg.steps is not None and (not isinstance(cfg.steps, tuple) or not cfg.steps or not all(map(_positive_int, cfg.steps))):
        shown = ",".join(map(str, cfg.steps)) if isinstance(cfg.steps, tuple) else repr(cfg.steps)
        raise UserError(f"steps must be a positive integer per level, not {shown}")
    if cfg.blend not in BLEND_MODES:
        raise UserError(f"unknown blend mode {cfg.blend!r}; choose from {', '.join(BLEND_MODES)}")
    if cfg.layout is not None and cfg.layout not in LAYOUTS:
        raise UserError(f"unknown layout {cfg.layout!r}; choose from {', '.join(LAYOUTS)}")
    if cfg.eta < 0:
        raise UserError(f"eta must be >= 0, not {cfg.eta}")
    if cfg.guidance is not None and (not cfg.guidance or min(cfg.guidance) < 0):
        raise UserError(f"guidance weights must be >= 0, not {cfg.guidance}")
    if cfg.autoguidance is not None and cfg.autoguidance < 0:
        raise UserError(f"autoguidance weight must be >= 0, not {cfg.autoguidance}")
    if cfg.seed < 0 or cfg.seed >= 2**63:
        raise UserError(f"seed must be in 0..2^63-1, not {cfg.seed}")
    if cfg.tile is not None and cfg.tile < 1:
        raise UserError(f"tile must be a positive integer, not {cfg.tile}")
    if cfg.overlap_stride is not None and cfg.overlap_stride < 1:
        raise UserError(f"overlap stride must be a positive integer, not {cfg.overlap_stride}")
    unknown = [f for f in cfg.formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)} (or none)")
    if cfg.compression not in COMPRESSIONS:
        raise UserError(f"unknown compression {cfg.compression!r}; choose from {', '.join(COMPRESSIONS)}")
    if cfg.memory_budget < 0:
        raise UserError(f"memory budget must be >= 0, not {cfg.memory_budget}")
    if cfg.workers < 0:
        raise UserError(f"workers must be >= 0, not {cfg.workers}")
    if cfg.workers and cfg.scheduler:
        raise UserError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues a partial slide and --overwrite replaces it; give one")
    if not 1 <= cfg.quality <= 100:
        raise UserError(f"quality must be in 1..100, not {cfg.quality}")
