"""DDIM (Song et al. 2021, eq. 12) as pure functions; they work on numpy arrays and torch tensors alike."""

from __future__ import annotations

import math
from typing import TypeVar

T = TypeVar("T")  # np.ndarray or torch.Tensor


def split_prediction(out: T, x_t: T, alpha_bar: float, prediction: str) -> tuple[T, T]:
    """Model output -> (x0, eps). v-prediction: Salimans & Ho 2022, x0 = a x_t - s v, eps = s x_t + a v."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction == "v":
        return a * x_t - s * out, s * x_t + a * out  # type: ignore[operator]
    if prediction == "eps":
        return (x_t - s * out) / a, out  # type: ignore[operator]
    raise ValueError(f"unknown prediction type {prediction!r}")


def ddim_sigma(alpha_bar: float, alpha_bar_next: float, eta: float) -> float:
    """sigma_t of DDIM eq. 16; eta = 0 is deterministic DDIM, eta = 1 is DDPM-like."""
    if alpha_bar_next >= 1.0:
        return 0.0
    return eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar)) * math.sqrt(1 - alpha_bar / alpha_bar_next)


def ddim_step(x0: T, eps: T, alpha_bar_next: float, sigma: float, noise: T | None) -> T:
    """x_{t-1} = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + sigma z."""
    direction = math.sqrt(max(1.0 - alpha_bar_next - sigma**2, 0.0))
    x = math.sqrt(alpha_bar_next) * x0 + direction * eps  # type: ignore[operator]
    if sigma > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs noise")
        x = x + sigma * noise  # type: ignore[operator]
    return x


def cfg_combine(out_cond: T, out_uncond: T, scale: float) -> T:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + scale * (cond - uncond)."""
    return out_uncond + scale * (out_cond - out_uncond)  # type: ignore[operator]
