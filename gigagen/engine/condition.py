"""Conditioning of a child level on its parent: the parent latent over the same field of view, upsampled."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def _axis_weights(start: int, stop: int, factor: int, parent_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and lerp weights for bilinear upsampling by `factor` (align_corners=False, edge clamp)."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / factor - 0.5
    i0 = np.floor(pos)
    w = (pos - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    return np.clip(i0, 0, parent_len - 1), np.clip(i0 + 1, 0, parent_len - 1), w


def cond_for_region(parent: np.ndarray, y0: int, y1: int, x0: int, x1: int, factor: int) -> np.ndarray:
    """Parent latent (C, Hp, Wp) -> conditioning (C, y1-y0, x1-x0) for child latent rows y0:y1, cols x0:x1.

    Equals a bilinear upsampling of the whole parent canvas cropped to the region, but reads only the
    parent rows and columns it needs, so tiles can be conditioned one at a time. The parent may be any
    array supporting numpy fancy slicing of a row/column window (numpy or zarr).
    """
    ya, yb, wy = _axis_weights(y0, y1, factor, parent.shape[1])
    xa, xb, wx = _axis_weights(x0, x1, factor, parent.shape[2])
    r0, r1 = int(ya.min()), int(yb.max()) + 1
    c0, c1 = int(xa.min()), int(xb.max()) + 1
    window = np.asarray(parent[:, r0:r1, c0:c1], dtype=np.float32)
    rows = window[:, ya - r0] * (1 - wy)[None, :, None] + window[:, yb - r0] * wy[None, :, None]
    return rows[:, :, xa - c0] * (1 - wx)[None, None, :] + rows[:, :, xb - c0] * wx[None, None, :]


class NoiseField:
    """Array-like Gaussian noise over a parent latent's canvas, `field[:, y0:y1, x0:x1]` and `field.shape`,
    drawn by `draw(channels, y0, y1, x0, x1)`. Passed to `cond_for_region` in place of the parent, it gives
    the parent-resolution noise of conditioning augmentation upsampled exactly as the parent is (the
    upsampling is linear, so noising the parent then upsampling equals this sum)."""

    def __init__(self, shape: tuple[int, ...], draw: Callable[[int, int, int, int, int], np.ndarray]) -> None:
        self.shape, self.draw = shape, draw

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        _, ys, xs = key
        y0, y1, _ = ys.indices(self.shape[1])
        x0, x1, _ = xs.indices(self.shape[2])
        return self.draw(self.shape[0], y0, y1, x0, x1)


def cond_noise_std(alphas_cumprod: Any, t: Any) -> Any:
    """Std of the conditioning noise at timestep(s) t: sqrt(1 - alpha_bar_t), and exactly 0 at t = 0 (a
    clean parent, in training and at sampling alike). numpy or torch, scalar or per sample."""
    return (1 - alphas_cumprod[t]) ** 0.5 * (t > 0)


def augment(cond: Any, noise: Any, sigma: Any) -> Any:
    """Variance-preserving conditioning augmentation: sqrt(1 - sigma^2) cond + sigma noise (numpy or torch;
    sigma a number or broadcastable per sample)."""
    return (1 - sigma * sigma) ** 0.5 * cond + sigma * noise
