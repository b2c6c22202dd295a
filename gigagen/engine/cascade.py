"""Coarse-to-fine cascade: sample the layout level, then refine level by level down to the finest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gigagen.engine.grid import Tiling, round_up
from gigagen.engine.levels import cond_factors
from gigagen.engine.store import LevelSpec, MemoryStore, StateView
from gigagen.engine.tiler import ModelFn, StepPlan, denoise_level

# denoise(store, parent view or None, factor to parent) runs the store's remaining steps
DenoiseFn = Callable[[Any, "StateView | None", int], None]


def channels_at(channels: int | Sequence[int], level: int) -> int:
    """A level's array channels from one count for all levels or one per level."""
    return channels if isinstance(channels, int) else channels[level]


@dataclass(frozen=True)
class LevelPlan:
    """One cascade level: index 0 is the finest; `factor` is how many of its cells one parent cell covers per
    side, the conditioning's upsampling (the zoom to its parent when both are latents; 0 for the layout)."""

    level: int
    magnification: float
    shape: tuple[int, int]  # array (height, width) in cells, padded to the tiling divisor
    factor: int


def plan_cascade(
    width: int, height: int, cells: tuple[int, ...], magnifications: tuple[float, ...], divisor: int
) -> list[LevelPlan]:
    """Array sizes per level, finest first: the finest covers the slide in cells of cells[0] px, and each parent
    covers ceil(child / factor) of its own cells, factor being the child's cells per parent cell and side
    (gigagen.engine.levels.cond_factors: the cascade's zoom when every level is a latent)."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    factors = cond_factors(tuple(magnifications), tuple(cells))
    h, w = round_up(-(-height // cells[0]), divisor), round_up(-(-width // cells[0]), divisor)
    plans = []
    for i, mag in enumerate(magnifications):
        if i > 0:
            h, w = round_up(-(-h // factors[i - 1]), divisor), round_up(-(-w // factors[i - 1]), divisor)
        plans.append(LevelPlan(i, mag, (h, w), factors[i]))
    return plans


def level_spec(plan: LevelPlan, channels: int | Sequence[int], seed: int, tiling: Tiling, cond_noise: float = 0.0) -> LevelSpec:
    return LevelSpec(plan.level, plan.shape, channels_at(channels, plan.level), seed, tiling, cond_noise if plan.factor else 0.0)


def local_denoiser(model_fn: ModelFn, steps: Sequence[list[StepPlan]], eta: float,
                   on_tiles: Callable[[int], None] | None = None) -> DenoiseFn:
    """Denoise in this process (the default; gigagen.engine.farm provides a dask.distributed one); `steps[level]`
    is that level's DDIM schedule (levels may take different numbers of steps)."""

    def denoise(store: Any, parent: StateView | None, factor: int) -> None:
        denoise_level(store, parent=parent, factor=factor, model_fn=model_fn, steps=steps[store.spec.level], eta=eta,
                      on_tiles=on_tiles)

    return denoise


def sample_cascade(
    plans: list[LevelPlan],
    *,
    channels: int | Sequence[int],
    n_steps: Sequence[int],
    seed: int,
    tiling: Tiling,
    denoise: DenoiseFn,
    make_store: Callable[[LevelSpec], Any] = MemoryStore,
    cond_noise: float = 0.0,
    on_level_start: Callable[[LevelPlan, Any], None] | None = None,
    on_level_done: Callable[[LevelPlan, Any], None] | None = None,
) -> Any:
    """Sample every level from the layout down, resuming each store where it stopped.

    `channels`: every level's array channels, or one count per level finest first.
    `cond_noise` > 0 noises every parent level as the denoiser was trained to expect (LevelSpec.cond_noise).
    `n_steps[level]` is that level's number of DDIM steps, so its final state, the one its child is conditioned
    on. Returns the finest level's store (its final state is `store.view(n_steps[0])`). Only a level and
    its parent are alive at once.
    """
    parent: StateView | None = None
    store: Any = None
    for plan in reversed(plans):
        store = make_store(level_spec(plan, channels, seed, tiling, cond_noise))
        if on_level_start:
            on_level_start(plan, store)
        denoise(store, parent, plan.factor)
        if on_level_done:
            on_level_done(plan, store)
        parent = store.view(n_steps[plan.level])
    return store


def with_written_level(denoise: DenoiseFn, level: int | None, write: DenoiseFn) -> DenoiseFn:
    """`denoise` at every level but `level`, which `write` writes instead (a bundle's decoded level, or its fragment
    layout); level None: `denoise` everywhere."""
    if level is None:
        return denoise

    def run(store: Any, parent: "StateView | None", factor: int) -> None:
        (write if store.spec.level == level else denoise)(store, parent, factor)

    return run
