"""What a run will cost before it starts: disk, memory, network evaluations and time on this machine.

Used by `gigagen slide` to refuse runs that cannot fit, and printed by `gigagen slide --plan`.
Disk and memory figures are upper bounds; time comes from a cost model timed on the engine's own steps here (`calibrate`).
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from gigagen import __version__
from gigagen.config import CALL_PIXELS, RunConfig
from gigagen.engine.cascade import LevelPlan, channels_at, level_spec, plan_cascade
from gigagen.engine.decode import decode_region, read_level
from gigagen.engine.exemplar import synthesize
from gigagen.engine.layout import ENCODE_HALO, render_layout
from gigagen.engine.grid import Tile, Tiling, step_segments
from gigagen.engine.store import LevelSpec, MemoryStore
from gigagen.engine.tiler import StepPlan, denoise_level, step_batches

MODEL_RSS_BYTES = 700 * 2**20  # python + torch + a small model, measured resident set before any latent
# the network's working memory per CALL_PIXELS latent pixels in one call: measured with the default model
# (2 tiles of 128^2: max RSS 1.24 GB at 16384^2 with latents on disk); smaller tiles need less
CALL_WORKING_BYTES = 512 * 2**20
TIFF_RATIO = {"jpeg": 0.25, "none": 1.0}  # bytes per raw RGB byte; lossless codecs bounded by 1.0
# px: calibration runs one step of every level of a slide at most this big, twice (about 3 s with the default model here)
CALIBRATION_SIDE = 4096
IO_MPX_PER_S = 30.0  # zarr pyramid + TIFF export throughput measured by scripts/bench_export.py (conservative)
EXEMPLAR_CALIBRATION_PX = 256  # px: an exemplar level's synthesis is timed on a tile this big with its halo
LAYOUT_CALIBRATION_PX = 256  # px: a fragment layout's rendering and encoding are timed on a region this big


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


def _bytes_per_px(plans: list[LevelPlan], channels: int | Sequence[int]) -> list[int]:
    """Bytes of one float32 array element of every level (channels: one count, or one per level)."""
    return [channels_at(channels, p.level) * 4 for p in plans]


def latent_memory_bytes(cfg: RunConfig, plans: list[LevelPlan], channels: int | Sequence[int]) -> int:
    """Latents held in memory by the in-memory store: a level, its parent, one checkpoint copy (+ overlap sums)."""
    a, per_px = _areas(plans), _bytes_per_px(plans, channels)
    parent = a[1] * per_px[1] if len(a) > 1 else 0
    extra = (2 * per_px[0] + 4) * a[0] if cfg.blend == "overlap" else 0
    return 2 * a[0] * per_px[0] + parent + extra


def disk_bytes(cfg: RunConfig, plans: list[LevelPlan], channels: int | Sequence[int], store_kind: str) -> dict[str, int]:
    raw = cfg.width * cfg.height * 3
    zarr_bytes = raw * 4 // 3 + 16 * 2**20  # uncompressed pyramid: an upper bound (zlib only shrinks it)
    tiffs = int(raw * 4 // 3 * TIFF_RATIO.get(cfg.compression, 1.0) * len(cfg.formats))
    level_bytes = [area * b for area, b in zip(_areas(plans), _bytes_per_px(plans, channels))]
    # memory store: one checkpoint per level; disk store: two states of a level plus every coarser final state
    latents = sum(level_bytes) + (level_bytes[0] if store_kind != "memory" else 0)
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


def estimate(cfg: RunConfig, plans: list[LevelPlan], channels: int | Sequence[int], store_kind: str) -> dict[str, Any]:
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


def calibrate(runner: Any, cfg: RunConfig, tiling: Tiling, steps: Sequence[list[StepPlan]], sampled: Sequence[int],
              chunk_latent: int) -> dict[str, Any]:
    """The cost model of a run's sampling and decoding, timed on this machine (`step_seconds` applies it).

    A network call costs `call_s` plus `latent_px_s` per latent pixel in it (from a full batch of whole tiles and
    from one small tile: on a CPU a small edge tile costs nearly a whole call). Per level, `step_factor` scales
    that for the rest of a step (guidance passes, conditioning, noise, DDIM update), and every call of a partial
    edge tile pays `new_shape_s` more: each step's grid shift gives its edge tiles new shapes, for which the
    CPU kernels are built anew. Both come from the engine's own step at every level in `sampled` of a slide at
    most CALIBRATION_SIDE px a side with this run's settings (each level conditioned on a noise parent), run twice:
    the second run meets only shapes it has seen. Timing bare network calls on whole tiles, as this did before,
    predicted 24-28 s for a 4096^2 slide that took 43 s.
    """
    mc = runner.bundle.config
    c = mc.level_channels
    call_s, px_s = _call_cost(runner, tiling, c[0], c[1] if len(c) > 1 else c[0])
    cal = plan_cascade(min(cfg.width, CALIBRATION_SIDE), min(cfg.height, CALIBRATION_SIDE), mc.level_cells,
                       mc.magnifications, mc.unet.divisor)
    factor: dict[str, float] = {}
    new_shape: dict[str, float] = {}
    for p in cal:
        if p.level not in sampled:
            continue
        spec = level_spec(p, c, cfg.seed, tiling, runner.cond_noise)
        parent = MemoryStore(level_spec(cal[p.level + 1], c, cfg.seed, tiling)).view(0) if p.factor else None
        seconds = []
        for _ in range(2):
            t0 = time.perf_counter()
            denoise_level(MemoryStore(spec), parent=parent, factor=p.factor, model_fn=runner.model_fn, steps=steps[p.level][:1],
                          eta=cfg.eta)
            seconds.append(time.perf_counter() - t0)
        calls, pixels, partial = step_calls(spec, range(1))
        factor[str(p.level)] = seconds[1] / max(calls * call_s + pixels * px_s, 1e-12)
        new_shape[str(p.level)] = max(seconds[0] - seconds[1], 0.0) / partial if partial else 0.0
    return {"call_s": call_s, "latent_px_s": px_s, "step_factor": factor, "new_shape_s": new_shape,
            "decode_s_per_latent_px": _decode_seconds(runner, chunk_latent) / chunk_latent**2}


def step_calls(spec: LevelSpec, steps: Iterable[int]) -> tuple[int, int, int]:
    """(network calls, latent pixels, calls of partial tiles) of these steps of a level, as the engine batches them."""
    calls = pixels = partial = 0
    full = (spec.tiling.tile, spec.tiling.tile)
    for k in steps:
        for batch in step_batches(spec, k):
            calls += 1
            pixels += sum(t.shape[0] * t.shape[1] for t in batch)
            partial += batch[0].shape != full
    return calls, pixels, partial


def step_seconds(spec: LevelSpec, n_steps: int, calib: dict[str, Any]) -> float:
    """Predicted seconds of a level's n_steps (calibrate's model)."""
    calls, pixels, partial = step_calls(spec, range(n_steps))
    key = str(spec.level)
    return calib["step_factor"][key] * (calls * calib["call_s"] + pixels * calib["latent_px_s"]) + partial * calib["new_shape_s"][key]


def _call_cost(runner: Any, tiling: Tiling, channels: int, cond_channels: int) -> tuple[float, float]:
    """(seconds per call, seconds per latent pixel) of the network at the finest level (its latent of `channels`, a
    parent of `cond_channels`), each shape's best of two."""

    def best(x: np.ndarray, cond: np.ndarray) -> float:
        runner.model_fn(x, 500, 0, cond)  # warm-up: kernel selection and caches for this shape
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            runner.model_fn(x, 500, 0, cond)
            times.append(time.perf_counter() - t0)
        return min(times)

    rng = np.random.default_rng(0)
    big = rng.standard_normal((tiling.batch_size, channels, tiling.tile, tiling.tile)).astype(np.float32)
    cond = rng.standard_normal((tiling.batch_size, cond_channels, tiling.tile, tiling.tile)).astype(np.float32)
    d = max(tiling.divisor, tiling.tile // 4)
    small, small_cond = (np.ascontiguousarray(a[:1, :, :d, :d]) for a in (big, cond))
    t_big, t_small = best(big, cond), best(small, small_cond)
    px_s = max(t_big - t_small, 0.0) / max(big[:, 0].size - d * d, 1)
    return max(t_small - px_s * d * d, 0.0), px_s


def _decode_seconds(runner: Any, chunk_latent: int) -> float:
    """One interior decode chunk as the pipeline decodes and writes it: with its halo of latent context on every
    side, into a scratch OME-Zarr slide."""
    from gigagen.io.omezarr import create_slide

    ae = runner.bundle.config.ae
    z = np.random.default_rng(1).standard_normal((ae.latent_ch, 3 * chunk_latent, 3 * chunk_latent)).astype(np.float32)
    px = chunk_latent * ae.factor
    centre = Tile(px, 2 * px, px, 2 * px)
    decode_region(z, runner.decode_fn, ae.factor, centre, ae.decode_halo)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        writer = create_slide(Path(tmp) / "calibration.ome.zarr", 3 * px, 3 * px, 0.5, {}, chunk=px)
        t0 = time.perf_counter()
        writer.write_tile(px, px, decode_region(z, runner.decode_fn, ae.factor, centre, ae.decode_halo))
        return time.perf_counter() - t0


def predict_seconds(cfg: RunConfig, plans: list[LevelPlan], calib: dict[str, Any], tiling: Tiling, channels: int | Sequence[int],
                    ae_factor: int, decoded_latent_px: int = 0) -> dict[str, float]:
    """Seconds per stage: every step of each sampled level at the calibrated cost of its calls (`calibrate`);
    `decoded_latent_px`: the latent a decoded level is read off (BundleConfig.decoded_level), counted as decoding,
    which it is (the level decoder has the autoencoder decoder's architecture)."""
    assert cfg.steps is not None  # resolved per level
    sampling = sum(step_seconds(level_spec(p, channels, cfg.seed, tiling), cfg.steps[p.level], calib)
                   for p in plans if str(p.level) in calib["step_factor"])
    latent0 = -(-cfg.width // ae_factor) * -(-cfg.height // ae_factor) + decoded_latent_px
    decode = latent0 * calib["decode_s_per_latent_px"]
    io = cfg.width * cfg.height * (1 + len(cfg.formats)) / 1e6 / IO_MPX_PER_S
    return {"sampling": sampling, "decode": decode, "pyramid_and_export": io, "total": sampling + decode + io}


def exemplar_seconds(runner: Any, level_px: tuple[int, int], group_px: int) -> float:
    """Predicted seconds of a bundle's exemplar level (BundleConfig.exemplar) of level_px (h, w) pixels, beyond the
    decoding of its guide (counted as decoding): preparing the exemplar (timed, as the run does it once) plus the
    synthesis of every group of group_px-px tiles with its halo, at the cost per pixel of one
    EXEMPLAR_CALIBRATION_PX-px tile with its halo, timed on a random latent after a warm-up (the patches it picks
    change, their number and the work per patch do not)."""
    mc = runner.bundle.config
    spec, f, k = mc.exemplar, mc.ae.factor, mc.decoded_level
    t0 = time.perf_counter()
    bank = runner.exemplar_bank()
    prepare = time.perf_counter() - t0
    halo = spec.halo(f)
    side = EXEMPLAR_CALIBRATION_PX + 2 * halo
    z = np.random.default_rng(2).standard_normal((mc.level_channels[k + 1], side // f, side // f)).astype(np.float32)
    guide = read_level(z, runner.level_decode_fn, f)
    synthesize(bank, z, guide, spec, 0, k)  # warm-up
    t0 = time.perf_counter()
    synthesize(bank, z, guide, spec, 0, k)
    per_px = (time.perf_counter() - t0) / side**2
    h, w = level_px
    extent = lambda a, n: min(a + group_px + halo, n) - max(a - halo, 0)  # noqa: E731  (a group's span with its halo)
    px = sum(extent(y, h) * extent(x, w) for y in range(0, h, group_px) for x in range(0, w, group_px))
    return prepare + per_px * px


def layout_seconds(runner: Any, tiles: Sequence[Tile]) -> float:
    """Predicted seconds of a fragment layout (BundleConfig.layout) written in `tiles` (latent cells): preparing the
    exemplar at the layout's magnification (timed) plus rendering and encoding every tile with its halo, at the cost
    per pixel of one LAYOUT_CALIBRATION_PX-px region, timed after a warm-up (the fragments there change with the seed,
    the work per pixel little)."""
    mc = runner.bundle.config
    top, e = mc.fragment_level, ENCODE_HALO
    assert top is not None, "this bundle samples its layout"
    f = mc.level_cells[top]
    t0 = time.perf_counter()
    ex, encode = runner.layout_exemplar(), runner.encode_fn_at(top)
    prepare = time.perf_counter() - t0
    side = LAYOUT_CALIBRATION_PX
    encode(render_layout(ex, mc.layout, 0, top, 0, 0, side, side))  # warm-up
    t0 = time.perf_counter()
    encode(render_layout(ex, mc.layout, 0, top, 0, 0, side, side))
    per_px = (time.perf_counter() - t0) / side**2
    px = sum((t.y1 - t.y0 + 2 * e) * (t.x1 - t.x0 + 2 * e) for t in tiles) * f * f
    return prepare + per_px * px
