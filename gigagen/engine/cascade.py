"""Coarse-to-fine cascade: sample the layout level, then refine level by level down to the finest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gigagen.engine.grid import round_up
from gigagen.engine.noise import INITIAL, gaussian_region
from gigagen.engine.tiler import ModelFn, StepPlan, Tiling, denoise_level


@dataclass(frozen=True)
class LevelPlan:
    """One cascade level: index 0 is the finest; `factor` is the zoom to its parent (0 for the layout)."""

    level: int
    magnification: float
    shape: tuple[int, int]  # latent (height, width), padded to the tiling divisor
    factor: int


def plan_cascade(
    width: int, height: int, ae_factor: int, magnifications: tuple[float, ...], divisor: int
) -> list[LevelPlan]:
    """Latent canvas sizes per level, finest first; each parent covers ceil(child / factor) latent pixels."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    h, w = round_up(-(-height // ae_factor), divisor), round_up(-(-width // ae_factor), divisor)
    plans = []
    for i, mag in enumerate(magnifications):
        if i > 0:
            f = int(round(magnifications[i - 1] / mag))
            h, w = round_up(-(-h // f), divisor), round_up(-(-w // f), divisor)
        factor = int(round(mag / magnifications[i + 1])) if i + 1 < len(magnifications) else 0
        plans.append(LevelPlan(i, mag, (h, w), factor))
    return plans


def initial_noise(seed: int, level: int, shape: tuple[int, int], channels: int) -> np.ndarray:
    return gaussian_region(seed, level, INITIAL, 0, shape[0], 0, shape[1], channels)


def sample_cascade(
    plans: list[LevelPlan],
    *,
    channels: int,
    model_fn: ModelFn,
    steps: list[StepPlan],
    eta: float,
    seed: int,
    tiling: Tiling,
    on_level_start: Callable[[LevelPlan], None] | None = None,
    on_tiles: Callable[[int], None] | None = None,
    on_level_done: Callable[[LevelPlan, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Sample every level from the layout down; returns the finest latent canvas (C, H, W).

    Only a level and its parent are held at once.
    """
    parent: np.ndarray | None = None
    for plan in reversed(plans):
        if on_level_start:
            on_level_start(plan)
        canvas = initial_noise(seed, plan.level, plan.shape, channels)
        denoise_level(
            canvas, level=plan.level, parent=parent, factor=plan.factor, model_fn=model_fn,
            steps=steps, eta=eta, seed=seed, tiling=tiling, on_tiles=on_tiles,
        )
        if on_level_done:
            on_level_done(plan, canvas)
        parent = canvas
    assert parent is not None
    return parent
