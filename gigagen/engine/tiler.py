"""One level's denoising: every DDIM step is one sweep of tiles over the latent canvas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gigagen.engine.condition import cond_for_region
from gigagen.engine.grid import Tile, batches, step_tiles
from gigagen.engine.noise import gaussian_region
from gigagen.sampling.ddim import ddim_sigma, ddim_step

# (x_t (B, C, h, w), timestep, level, cond (B, C, h, w) or None) -> (x0, eps), each (B, C, h, w) float32
ModelFn = Callable[[np.ndarray, int, int, "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]
TILE_ORDERS = ("raster", "reverse", "shuffle")


@dataclass(frozen=True)
class Tiling:
    tile: int  # latent tile side
    mode: str = "gridshift"  # see gigagen.engine.grid.BLEND_MODES
    divisor: int = 4  # tile edges and offsets are multiples of this (the UNet's downsampling)
    stride: int | None = None  # overlap mode only; default tile // 2
    batch_size: int = 16
    order: str = "raster"  # processing order; results must not depend on it (tested)


@dataclass(frozen=True)
class StepPlan:
    """One DDIM step: from timestep t to t_next (alpha_bar_next = 1 at the end)."""

    index: int
    t: int
    alpha_bar: float
    alpha_bar_next: float


def step_plans(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> list[StepPlan]:
    plans = []
    for i, t in enumerate(timesteps):
        nxt = float(alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        plans.append(StepPlan(i, int(t), float(alphas_cumprod[t]), nxt))
    return plans


def ordered(tiles: list[Tile], order: str, salt: int) -> list[Tile]:
    if order == "raster":
        return tiles
    if order == "reverse":
        return tiles[::-1]
    if order == "shuffle":
        perm = np.random.default_rng(salt).permutation(len(tiles))
        return [tiles[i] for i in perm]
    raise ValueError(f"unknown tile order {order!r}")


def tiles_per_level(shape: tuple[int, int], tiling: Tiling, seed: int, level: int, n_steps: int) -> int:
    """Total tiles one level will evaluate over all steps (for progress bars and cost estimates)."""
    return sum(
        len(step_tiles(shape, tiling.tile, tiling.mode, seed=seed, level=level, step=i, divisor=tiling.divisor, stride=tiling.stride))
        for i in range(n_steps)
    )


def _conditioning(parent: np.ndarray | None, factor: int, batch: list[Tile]) -> np.ndarray | None:
    if parent is None:
        return None
    return np.stack([cond_for_region(parent, t.y0, t.y1, t.x0, t.x1, factor) for t in batch])


def _noise(seed: int, level: int, step: StepPlan, tile: Tile, channels: int, sigma: float, cache: dict) -> np.ndarray | None:
    if sigma == 0.0:
        return None
    return gaussian_region(seed, level, step.index + 1, tile.y0, tile.y1, tile.x0, tile.x1, channels, cache)


def denoise_level(
    canvas: np.ndarray,
    *,
    level: int,
    parent: np.ndarray | None,
    factor: int,
    model_fn: ModelFn,
    steps: list[StepPlan],
    eta: float,
    seed: int,
    tiling: Tiling,
    on_tiles: Callable[[int], None] | None = None,
) -> None:
    """Run all DDIM steps on `canvas` (C, H, W) float32 in place, starting from x_T already in it."""
    for step in steps:
        tiles = step_tiles(
            canvas.shape[1:], tiling.tile, tiling.mode, seed=seed, level=level, step=step.index,
            divisor=tiling.divisor, stride=tiling.stride,
        )
        tiles = ordered(tiles, tiling.order, salt=step.index)
        sweep = _sweep_overlap if tiling.mode == "overlap" else _sweep_disjoint
        sweep(canvas, tiles, level, parent, factor, model_fn, step, eta, seed, tiling.batch_size, on_tiles)


def _sweep_disjoint(canvas, tiles, level, parent, factor, model_fn, step, eta, seed, batch_size, on_tiles) -> None:
    """Non-overlapping tiles: each reads and writes only its own region, so the update is in place."""
    sigma = ddim_sigma(step.alpha_bar, step.alpha_bar_next, eta)
    cache: dict = {}
    for batch in batches(tiles, batch_size):
        x = np.stack([canvas[:, t.y0 : t.y1, t.x0 : t.x1] for t in batch])
        x0, eps = model_fn(x, step.t, level, _conditioning(parent, factor, batch))
        for j, t in enumerate(batch):
            noise = _noise(seed, level, step, t, canvas.shape[0], sigma, cache)
            canvas[:, t.y0 : t.y1, t.x0 : t.x1] = ddim_step(x0[j], eps[j], step.alpha_bar_next, sigma, noise)
        if on_tiles:
            on_tiles(len(batch))


def _sweep_overlap(canvas, tiles, level, parent, factor, model_fn, step, eta, seed, batch_size, on_tiles) -> None:
    """Overlapping windows: average every window's (x0, eps) per pixel, then take one DDIM step."""
    sum_x0 = np.zeros_like(canvas)
    sum_eps = np.zeros_like(canvas)
    weight = np.zeros(canvas.shape[1:], dtype=np.float32)
    for batch in batches(tiles, batch_size):
        x = np.stack([canvas[:, t.y0 : t.y1, t.x0 : t.x1] for t in batch])
        x0, eps = model_fn(x, step.t, level, _conditioning(parent, factor, batch))
        for j, t in enumerate(batch):
            sum_x0[:, t.y0 : t.y1, t.x0 : t.x1] += x0[j]
            sum_eps[:, t.y0 : t.y1, t.x0 : t.x1] += eps[j]
            weight[t.y0 : t.y1, t.x0 : t.x1] += 1.0
        if on_tiles:
            on_tiles(len(batch))
    sigma = ddim_sigma(step.alpha_bar, step.alpha_bar_next, eta)
    whole = Tile(0, canvas.shape[1], 0, canvas.shape[2])
    noise = _noise(seed, level, step, whole, canvas.shape[0], sigma, {})
    canvas[:] = ddim_step(sum_x0 / weight, sum_eps / weight, step.alpha_bar_next, sigma, noise)
