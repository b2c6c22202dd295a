"""What a run will cost before it starts: disk, memory, network evaluations and time on this machine.

Used by `gigagen slide` to refuse runs that cannot fit, and printed by `gigagen slide --plan`.
Disk and memory figures are upper bounds; time comes from timing the real networks here.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from gigagen import __version__
from gigagen.config import CALL_PIXELS, RunConfig
from gigagen.engine.cascade import LevelPlan
from gigagen.engine.grid import step_segments

MODEL_RSS_BYTES = 700 * 2**20  # python + torch + a small model, measured resident set before any latent
# the network's working memory per CALL_PIXELS latent pixels in one call: measured with the default model
# (2 tiles of 128^2: max RSS 1.24 GB at 16384^2 with latents on disk); smaller tiles need less
CALL_WORKING_BYTES = 512 * 2**20
TIFF_RATIO = {"jpeg": 0.25, "none": 1.0}  # bytes per raw RGB byte; lossless codecs bounded by 1.0
IO_MPX_PER_S = 30.0  # zarr pyramid + TIFF export throughput measured by scripts/bench_export.py (conservative)


def versions() -> dict[str, str]:
    import tifffile
    import torch
    import zarr

    return {
        "gigagen": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "zarr": zarr.__version__, "tifffile": tifffile.__version__,
    }


def _areas(plans: list[LevelPlan]) -> list[int]:
    return [p.shape[0] * p.shape[1] for p in plans]


def latent_memory_bytes(cfg: RunConfig, plans: list[LevelPlan], channels: int) -> int:
    """Latents held in memory by the in-memory store: a level, its parent, one checkpoint copy (+ overlap sums)."""
    a = _areas(plans)
    parent = a[1] if len(a) > 1 else 0
    per_px = channels * 4
    extra = (2 * per_px + 4) * a[0] if cfg.blend == "overlap" else 0
    return (2 * a[0] + parent) * per_px + extra


def disk_bytes(cfg: RunConfig, plans: list[LevelPlan], channels: int, store_kind: str) -> dict[str, int]:
    raw = cfg.width * cfg.height * 3
    zarr_bytes = raw * 4 // 3 + 16 * 2**20  # uncompressed pyramid: an upper bound (zlib only shrinks it)
    tiffs = int(raw * 4 // 3 * TIFF_RATIO.get(cfg.compression, 1.0) * len(cfg.formats))
    a = _areas(plans)
    per_px = channels * 4
    # memory store: one checkpoint per level; disk store: two states of a level plus every coarser final state
    latents = sum(a) * per_px if store_kind == "memory" else (2 * a[0] + sum(a[1:])) * per_px
    return {"zarr": zarr_bytes, "tiffs": tiffs, "latent_state": latents, "total": zarr_bytes + tiffs + latents}


def evaluations(cfg: RunConfig, plans: list[LevelPlan], tile: int, divisor: int, guide_levels: tuple[int, ...] = ()) -> dict[str, int]:
    """UNet tiles and latent pixels evaluated over the whole cascade (CFG doubles the levels it guides;
    cfg.guidance and cfg.steps are the resolved per-level tuples);
    autoguidance adds as many evaluations of the smaller guide network at its levels, counted apart."""
    tiles = pixels = guide_tiles = guide_pixels = 0
    guided = cfg.autoguidance not in (None, 1.0)
    for p in plans:
        level_tiles = level_pixels = 0
        guided_cfg = p.level < len(cfg.guidance or ()) and cfg.guidance[p.level] != 1.0  # type: ignore[index]
        passes = 2 if guided_cfg else 1
        for step in range(cfg.steps[p.level]):  # type: ignore[index]
            rows, cols = step_segments(p.shape, tile, cfg.blend, seed=cfg.seed, level=p.level, step=step, divisor=divisor, stride=cfg.overlap_stride)
            level_tiles += passes * len(rows) * len(cols)
            level_pixels += passes * sum(b - a for a, b in rows) * sum(b - a for a, b in cols)
        tiles, pixels = tiles + level_tiles, pixels + level_pixels
        if guided and p.level in guide_levels:
            guide_tiles, guide_pixels = guide_tiles + level_tiles, guide_pixels + level_pixels
    return {"unet_tiles": tiles, "unet_latent_pixels": pixels, "guide_tiles": guide_tiles, "guide_latent_pixels": guide_pixels}


def estimate(cfg: RunConfig, plans: list[LevelPlan], channels: int, store_kind: str) -> dict[str, Any]:
    """Disk and peak memory of a run whose tile and batch size are resolved (pipeline._setup_model); the
    network's working memory grows with the latent pixels of one call."""
    assert cfg.tile is not None and cfg.batch_size is not None
    call_pixels = cfg.batch_size * cfg.tile * cfg.tile
    latent_mem = latent_memory_bytes(cfg, plans, channels) if store_kind == "memory" else 0
    disk = disk_bytes(cfg, plans, channels, store_kind)
    return {
        "disk_bytes": disk["total"], "disk": disk, "latent_memory_bytes": latent_mem,
        "peak_memory_bytes": MODEL_RSS_BYTES + latent_mem + CALL_WORKING_BYTES * max(1, -(-call_pixels // CALL_PIXELS)),
    }


def calibrate(runner: Any, tile: int, batch_size: int, chunk_latent: int) -> dict[str, float]:
    """Seconds per UNet latent pixel and per decoded latent pixel, timed on this machine's networks."""
    c = runner.bundle.config.ae.latent_ch
    x = np.random.default_rng(0).standard_normal((batch_size, c, tile, tile)).astype(np.float32)
    runner.model_fn(x, 500, 0, x)  # warm-up: kernel selection and caches
    t0 = time.perf_counter()
    for _ in range(2):
        runner.model_fn(x, 500, 0, x)
    unet = (time.perf_counter() - t0) / (2 * batch_size * tile * tile)
    z = np.random.default_rng(1).standard_normal((1, c, chunk_latent, chunk_latent)).astype(np.float32)
    runner.decode_fn(z)
    t0 = time.perf_counter()
    runner.decode_fn(z)
    decode = (time.perf_counter() - t0) / (chunk_latent * chunk_latent)
    return {"unet_s_per_latent_px": unet, "decode_s_per_latent_px": decode}


def predict_seconds(cfg: RunConfig, plans: list[LevelPlan], evals: dict[str, int], calib: dict[str, float], ae_factor: int,
                    decoded_latent_px: int = 0) -> dict[str, float]:
    """Seconds per stage; `decoded_latent_px`: the latent a decoded level is read off (BundleConfig.decoded_level),
    counted as decoding, which it is (the level decoder has the autoencoder decoder's architecture)."""
    sampling = evals["unet_latent_pixels"] * calib["unet_s_per_latent_px"]
    latent0 = -(-cfg.width // ae_factor) * -(-cfg.height // ae_factor) + decoded_latent_px
    decode = latent0 * calib["decode_s_per_latent_px"] * 1.3  # halo overhead of 6 latent px around 64
    io = cfg.width * cfg.height * (1 + len(cfg.formats)) / 1e6 / IO_MPX_PER_S
    return {"sampling": sampling, "decode": decode, "pyramid_and_export": io, "total": sampling + decode + io}
