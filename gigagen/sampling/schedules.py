"""Noise schedules as pure functions of integers."""

from __future__ import annotations

import numpy as np


def cosine_alphas_cumprod(n_train_steps: int = 1000, s: float = 0.008) -> np.ndarray:
    """alpha_bar_t for t = 0..n-1, cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at 0.999."""
    steps = np.arange(n_train_steps + 1, dtype=np.float64) / n_train_steps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1.0 - betas)


def ddim_timesteps(n_train_steps: int, n_steps: int) -> np.ndarray:
    """Descending timesteps with trailing spacing, so sampling starts at the last (pure-noise) step.

    Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed", table 2).
    """
    if not 1 <= n_steps <= n_train_steps:
        raise ValueError(f"steps must be in 1..{n_train_steps}")
    ts = np.round(np.arange(n_train_steps, 0, -n_train_steps / n_steps)).astype(np.int64) - 1
    return ts
