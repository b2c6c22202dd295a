"""One level's denoising: every DDIM step is one sweep of tiles over the level's latent state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gigagen.engine.condition import NoiseField, augment, cond_for_region
from gigagen.engine.grid import Tile, Tiling, batches, step_tiles
from gigagen.engine.noise import gaussian_region
from gigagen.engine.store import LevelSpec, MemoryStore
from gigagen.sampling.ddim import ddim_sigma, ddim_step

__all__ = ["ModelFn", "StepPlan", "Tiling", "denoise_level", "run_batch", "step_batches", "step_plans", "tiles_per_level"]

# (x_t (B, C, h, w), timestep, level, cond (B, C, h, w) or None) -> (x0, eps), each (B, C, h, w) float32
ModelFn = Callable[[np.ndarray, int, int, "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]
TILE_ORDERS = ("raster", "reverse", "shuffle")


@dataclass(frozen=True)
class StepPlan:
    """DDIM step `index`: from timestep t (state index) to the next (alpha_bar_next = 1 at the end)."""

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


def _tiles(spec: LevelSpec, step: int) -> list[Tile]:
    t = spec.tiling
    return step_tiles(spec.shape, t.tile, t.mode, seed=spec.seed, level=spec.level, step=step, divisor=t.divisor, stride=t.stride)


def step_batches(spec: LevelSpec, step: int) -> list[list[Tile]]:
    """The network batches of one step, in the configured processing order."""
    return list(batches(ordered(_tiles(spec, step), spec.tiling.order, salt=step), spec.tiling.batch_size))


def tiles_per_level(spec: LevelSpec, n_steps: int, first_step: int = 0) -> int:
    """Tiles one level evaluates over its (remaining) steps, for progress bars and cost estimates."""
    return sum(len(_tiles(spec, i)) for i in range(first_step, n_steps))


COND_NOISE_KEY = 2**31 - 1  # the `step` key of conditioning-augmentation noise (DDIM steps use 0..n_steps)


def _conditioning(parent: Any | None, factor: int, batch: list[Tile], spec: LevelSpec) -> np.ndarray | None:
    """The batch's parent conditioning, noised at the parent's resolution when spec.cond_noise > 0."""
    if parent is None:
        return None
    cond = np.stack([cond_for_region(parent, t.y0, t.y1, t.x0, t.x1, factor) for t in batch])
    if spec.cond_noise <= 0.0:
        return cond

    def draw(c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return gaussian_region(spec.seed, spec.level, COND_NOISE_KEY, y0, y1, x0, x1, c)

    field = NoiseField(parent.shape, draw)
    noise = np.stack([cond_for_region(field, t.y0, t.y1, t.x0, t.x1, factor) for t in batch])
    return augment(cond, noise, spec.cond_noise)


def run_batch(
    store: Any, spec: LevelSpec, batch: list[Tile], *, parent: Any | None, factor: int, model_fn: ModelFn,
    step: StepPlan, eta: float, noise_cache: dict | None = None,
) -> None:
    """Denoise one batch of disjoint tiles: read state `step.index`, write state `step.index + 1`."""
    k = step.index
    x = np.stack([store.read(k, t.y0, t.y1, t.x0, t.x1) for t in batch])
    x0, eps = model_fn(x, step.t, spec.level, _conditioning(parent, factor, batch, spec))
    sigma = ddim_sigma(step.alpha_bar, step.alpha_bar_next, eta)
    for j, t in enumerate(batch):
        noise = None
        if sigma > 0.0:
            noise = gaussian_region(spec.seed, spec.level, k + 1, t.y0, t.y1, t.x0, t.x1, spec.channels, noise_cache)
        store.write(k + 1, t, ddim_step(x0[j], eps[j], step.alpha_bar_next, sigma, noise))


def denoise_level(
    store: Any, *, parent: Any | None, factor: int, model_fn: ModelFn, steps: list[StepPlan], eta: float,
    on_tiles: Callable[[int], None] | None = None,
) -> None:
    """Run the DDIM steps the store has not completed yet; commit after each one (the resume point)."""
    spec: LevelSpec = store.spec
    for step in steps[store.completed() :]:
        if spec.tiling.mode == "overlap":
            _sweep_overlap(store, parent, factor, model_fn, step, eta, on_tiles)
        else:
            cache: dict = {}
            for batch in step_batches(spec, step.index):
                run_batch(store, spec, batch, parent=parent, factor=factor, model_fn=model_fn, step=step, eta=eta, noise_cache=cache)
                if on_tiles:
                    on_tiles(len(batch))
        store.commit(step.index + 1)


def _sweep_overlap(store: MemoryStore, parent, factor, model_fn, step: StepPlan, eta: float, on_tiles) -> None:
    """Overlapping windows (MultiDiffusion, Bar-Tal et al. 2023, eq. 5): average every window's (x0, eps)."""
    spec, canvas = store.spec, store.canvas
    sum_x0 = np.zeros_like(canvas)
    sum_eps = np.zeros_like(canvas)
    weight = np.zeros(canvas.shape[1:], dtype=np.float32)
    for batch in step_batches(spec, step.index):
        x = np.stack([canvas[:, t.y0 : t.y1, t.x0 : t.x1] for t in batch])
        x0, eps = model_fn(x, step.t, spec.level, _conditioning(parent, factor, batch, spec))
        for j, t in enumerate(batch):
            sum_x0[:, t.y0 : t.y1, t.x0 : t.x1] += x0[j]
            sum_eps[:, t.y0 : t.y1, t.x0 : t.x1] += eps[j]
            weight[t.y0 : t.y1, t.x0 : t.x1] += 1.0
        if on_tiles:
            on_tiles(len(batch))
    sigma = ddim_sigma(step.alpha_bar, step.alpha_bar_next, eta)
    noise = None
    if sigma > 0.0:
        noise = gaussian_region(spec.seed, spec.level, step.index + 1, 0, canvas.shape[1], 0, canvas.shape[2], spec.channels)
    canvas[:] = ddim_step(sum_x0 / weight, sum_eps / weight, step.alpha_bar_next, sigma, noise)
