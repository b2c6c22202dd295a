"""`generate(cfg)`: the one place that wires models, engine and io into a slide on disk."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from gigagen import __version__
from gigagen.config import RunConfig, validate
from gigagen.engine.cascade import LevelPlan, plan_cascade, sample_cascade
from gigagen.engine.decode import stream_decode, to_uint8
from gigagen.engine.tiler import Tiling, step_plans, tiles_per_level
from gigagen.errors import UserError
from gigagen.sampling.schedules import ddim_timesteps

PIXEL_CHUNK = 512
# ProgressFactory(description, total, unit) -> object with update(n) and close()
ProgressFactory = Callable[[str, int, str], Any]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(desc: str, total: int, unit: str) -> _NoProgress:
    return _NoProgress()


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - t0, 3)


def estimate_disk_bytes(cfg: RunConfig) -> int:
    """Upper bound of the bytes a slide will take: an uncompressed zarr pyramid plus each TIFF."""
    level0 = cfg.width * cfg.height * 3
    pyramid = level0 * 4 // 3 + 64 * 1024 * 1024
    tiff_ratio = 0.35 if cfg.compression == "jpeg" else 1.0
    return int(pyramid * (1 + tiff_ratio * len(cfg.formats)))


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to touch an existing path unless --overwrite, and never delete something that is not a slide."""
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if not out.is_dir() or not ((out / "run.json").exists() or (out / "slide.ome.zarr").exists()):
        raise UserError(f"{out} exists and is not a gigagen slide; refusing to replace it")


def check_memory(cfg: RunConfig, plans: list[LevelPlan], channels: int) -> None:
    """The latent canvases of a level and its parent are held in memory (overlap mode: 3 more buffers)."""
    import psutil

    area = max(p.shape[0] * p.shape[1] for p in plans)
    need = area * channels * 4 * (1.25 + (3 if cfg.blend == "overlap" else 0))
    free = psutil.virtual_memory().available
    if need > 0.8 * free:
        raise UserError(f"a {cfg.width}x{cfg.height} slide needs about {need / 1e9:.1f} GB of memory for its latents but {free / 1e9:.1f} GB is available")


def check_disk(cfg: RunConfig, out: Path) -> int:
    need = estimate_disk_bytes(cfg)
    anchor = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(anchor).free
    if need > free:
        raise UserError(f"a {cfg.width}x{cfg.height} slide needs about {need / 1e9:.1f} GB but {anchor} has {free / 1e9:.1f} GB free")
    return need


def versions() -> dict[str, str]:
    import tifffile
    import torch
    import zarr

    return {
        "gigagen": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "zarr": zarr.__version__, "tifffile": tifffile.__version__,
    }


@contextmanager
def replacing(out: Path) -> Iterator[None]:
    """Move an existing slide aside, restore it if generation fails, delete it once the new one is done."""
    backup = out.with_name(f".{out.name}.replaced")
    moved = out.exists()
    if moved:
        if backup.exists():
            shutil.rmtree(backup)
        out.rename(backup)
    try:
        yield
    except BaseException:
        if moved:
            shutil.rmtree(out, ignore_errors=True)
            backup.rename(out)
        raise
    if moved:
        shutil.rmtree(backup)


def _level_label(plan: LevelPlan, n_levels: int) -> str:
    kind = "layout" if plan.level == n_levels - 1 else "refine"
    return f"{kind} {plan.magnification:g}x"


def generate(cfg: RunConfig, progress: ProgressFactory = no_progress, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Generate one slide into cfg.out; returns the run record (also written to run.json)."""
    from gigagen.models.checkpoint import load_bundle
    from gigagen.models.denoiser import BundleRunner, pick_device, pick_dtype

    validate(cfg)
    out = Path(cfg.out)
    check_output(out, cfg.overwrite)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    bundle = load_bundle(Path(cfg.checkpoint) if cfg.checkpoint else None, device)
    mc = bundle.config
    if cfg.steps > mc.n_train_steps:
        raise UserError(f"steps must be at most {mc.n_train_steps} for this model")
    divisor = mc.unet.divisor
    tile = cfg.tile or mc.tile
    if tile % divisor:
        raise UserError(f"tile must be a multiple of {divisor} for this model, not {tile}")
    disk_need = check_disk(cfg, out)
    if not mc.trained:
        log("warning: this model is an untrained random placeholder; the slide will not look like tissue")

    runner = BundleRunner(bundle, device, dtype, cfg.guidance)
    tiling = Tiling(tile=tile, mode=cfg.blend, divisor=divisor, stride=cfg.overlap_stride, batch_size=cfg.batch_size, order=cfg.tile_order)
    plans = plan_cascade(cfg.width, cfg.height, mc.ae.factor, mc.magnifications, divisor)
    check_memory(cfg, plans, mc.ae.latent_ch)
    steps = step_plans(runner.alphas_cumprod, ddim_timesteps(mc.n_train_steps, cfg.steps))
    record: dict[str, Any] = {
        "generator": "gigagen", "synthetic": True, "status": "generating", "config": cfg.as_dict(),
        "seed": cfg.seed, "width": cfg.width, "height": cfg.height, "mpp": mc.mpp0,
        "model": {"identity": bundle.identity, "name": mc.name, "trained": mc.trained, "checkpoint": cfg.checkpoint or "embedded default"},
        "device": str(device), "precision": str(dtype).replace("torch.", ""), "versions": versions(),
        "levels": [{"level": p.level, "magnification": p.magnification, "latent_shape": list(p.shape)} for p in plans],
        "estimated_disk_bytes": disk_need,
    }
    with replacing(out):
        record = _run(cfg, out, record, runner, tiling, plans, steps, progress)
    return record


def _run(cfg, out, record, runner, tiling, plans, steps, progress) -> dict[str, Any]:
    from gigagen.io.omezarr import create_slide

    timings = Timings()
    t_start = time.perf_counter()
    out.mkdir(parents=True)
    attrs = {k: record[k] for k in ("generator", "synthetic", "seed", "width", "height", "mpp")}
    attrs |= {"version": __version__, "model": record["model"]["identity"]}
    writer = create_slide(out / "slide.ome.zarr", cfg.width, cfg.height, record["mpp"], attrs, chunk=PIXEL_CHUNK)
    _write_json(out / "run.json", record)

    latent = _sample(cfg, out, runner, tiling, plans, steps, progress, timings)
    f = runner.bundle.config.ae.factor
    with timings.stage("decode"):
        bar = progress(f"decode {plans[0].magnification:g}x", -(-cfg.height // PIXEL_CHUNK) * -(-cfg.width // PIXEL_CHUNK), "tile")
        for tile, rgb in stream_decode(latent, runner.decode_fn, f, cfg.height, cfg.width, chunk=PIXEL_CHUNK):
            writer.write_tile(tile.y0, tile.x0, rgb)
            bar.update(1)
        bar.close()
    del latent
    with timings.stage("pyramid"):
        bar = progress("pyramid", writer.pyramid_chunk_count(), "chunk")
        writer.build_pyramid(bar.update)
        bar.close()
    c = runner.counters
    record |= {
        "status": "complete",
        "network_evaluations": {
            "unet_calls": c.unet_calls, "unet_tiles": c.unet_tiles, "unet_latent_pixels": c.unet_pixels,
            "per_latent_pixel_per_step": round(c.unet_pixels / (cfg.steps * sum(p.shape[0] * p.shape[1] for p in plans)), 4),
            "decode_calls": c.decode_calls,
        },
    }
    writer.finish({"status": "complete"})
    if cfg.formats:
        _export(cfg, out, progress, timings)
    timings.stages["total"] = round(time.perf_counter() - t_start, 3)
    record["timings_s"] = timings.stages
    _write_json(out / "run.json", record)
    return record


def _sample(cfg, out, runner, tiling, plans, steps, progress, timings) -> np.ndarray:
    """The cascade with one progress bar per level; the layout level is saved as layout.png."""
    bars: dict[str, Any] = {}
    n_levels = len(plans)

    def start(plan: LevelPlan) -> None:
        total = tiles_per_level(plan.shape, tiling, cfg.seed, plan.level, len(steps))
        bars["bar"] = progress(_level_label(plan, n_levels), total, "tile")
        bars["t0"] = time.perf_counter()

    def done(plan: LevelPlan, canvas: np.ndarray) -> None:
        bars["bar"].close()
        timings.stages[f"level{plan.level}_{plan.magnification:g}x"] = round(time.perf_counter() - bars["t0"], 3)
        if plan.level == n_levels - 1:
            _save_layout(out / "layout.png", canvas, runner, plans, cfg)

    return sample_cascade(
        plans, channels=runner.bundle.config.ae.latent_ch, model_fn=runner.model_fn, steps=steps, eta=cfg.eta,
        seed=cfg.seed, tiling=tiling, on_level_start=start, on_tiles=lambda n: bars["bar"].update(n), on_level_done=done,
    )


def _save_layout(path: Path, canvas: np.ndarray, runner, plans: list[LevelPlan], cfg: RunConfig) -> None:
    """Decode the whole (small) layout canvas and crop it to the slide's field of view at that magnification."""
    from PIL import Image

    px = to_uint8(runner.decode_fn(canvas[None])[0])
    scale = plans[0].magnification / plans[-1].magnification
    h, w = max(1, round(cfg.height / scale)), max(1, round(cfg.width / scale))
    Image.fromarray(np.moveaxis(px[:, :h, :w], 0, -1)).save(path)


def _export(cfg: RunConfig, out: Path, progress, timings: Timings) -> None:
    from gigagen.io.export import export_slide

    bars: dict[str, Any] = {}

    def report(fmt: str, done: int, total: int) -> None:
        if fmt not in bars:
            bars[fmt] = (progress(f"export {fmt}", total, "tile"), [0])
        bar, seen = bars[fmt]
        bar.update(done - seen[0])
        seen[0] = done

    with timings.stage("export"):
        export_slide(out, formats=cfg.formats, compression=cfg.compression, quality=cfg.quality, progress=report)
    for bar, _ in bars.values():
        bar.close()


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
