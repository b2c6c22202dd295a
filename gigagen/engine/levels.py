"""How each cascade level is held: as autoencoder latents, or as pixels folded into channels.

A level's *cell* is the side in pixels (at its magnification) of one element of its array. A latent level
has the autoencoder's factor (8). A pixel level holds its RGB image space-to-depth (pixel unshuffle) with
cells of `pixel_cell` px, 3 cell^2 channels, as many as the latent has, so one denoiser serves both kinds.

Why pixel levels: the 20x level learns where nuclei are from its parent. A 5x latent keeps 12 numbers of
each 8 x 8 px (192 values) and loses that; the 5x pixels keep it (scripts/cond_information.py: a small
regressor reads the 20x latent off the real 5x pixels with 0.23 of its variance unexplained, off the 5x
latent with 0.55). With 20x / 5x / 1.25x and 12 latent channels, a 5x pixel level in 2 px cells lies on
exactly the 20x latent's grid (4 x 2 = 8 px at 20x), so the 20x level's conditioning is that level itself.
"""

from __future__ import annotations

import math

import numpy as np


def pixel_cell(latent_ch: int) -> int:
    """The cell side c with 3 c^2 == latent_ch (12 -> 2); ValueError when there is none."""
    c = math.isqrt(latent_ch // 3)
    if c < 1 or 3 * c * c != latent_ch:
        raise ValueError(f"pixel levels need 3 c^2 latent channels (12, 27, 48, ...), not {latent_ch}")
    return c


def level_cells(ae_factor: int, latent_ch: int, n_levels: int, pixel_levels: tuple[int, ...],
                coarse_factor: int | None = None) -> tuple[int, ...]:
    """Cell side of every level, finest first. Pixel levels may only be intermediate levels: the finest is
    decoded into the slide and the layout into layout.png by the autoencoder. With `coarse_factor` (a coarse
    autoencoder, BundleConfig.coarse_ae) every level above the finest is that autoencoder's latent."""
    if any(not 0 < k < n_levels - 1 for k in pixel_levels) or len(set(pixel_levels)) != len(pixel_levels):
        raise ValueError(f"pixel levels must be distinct intermediate levels (1..{n_levels - 2}), not {list(pixel_levels)}")
    if coarse_factor is not None:
        return (ae_factor,) + (coarse_factor,) * (n_levels - 1)
    cell = pixel_cell(latent_ch) if pixel_levels else ae_factor
    return tuple(cell if k in pixel_levels else ae_factor for k in range(n_levels))


def level_scales(latent_scale: float, pixel_scale: float, n_levels: int, pixel_levels: tuple[int, ...],
                 coarse_scale: float | None = None) -> tuple[float, ...]:
    """What each level's raw array (latent, or folded pixels in [-1, 1]) is multiplied by for the denoiser; with
    `coarse_scale` (a coarse autoencoder's latent scale) every level above the finest takes that."""
    if coarse_scale is not None:
        return (latent_scale,) + (coarse_scale,) * (n_levels - 1)
    return tuple(pixel_scale if k in pixel_levels else latent_scale for k in range(n_levels))


def level_zooms(magnifications: tuple[float, ...]) -> tuple[int, ...]:
    """Zoom from each level to its parent, finest first (20x, 5x, 1.25x -> (4, 4)). ValueError unless each is a
    whole number >= 2, or 1 where a magnification repeats (a pixel level under the latent level of the same
    magnification; `cond_factors` checks the kinds)."""
    out = []
    for a, b in zip(magnifications, magnifications[1:]):
        z = a / b
        if z < 1 - 1e-6 or abs(z - round(z)) > 1e-6:
            raise ValueError(f"magnifications {list(magnifications)} must fall by whole factors, finest first")
        out.append(int(round(z)))
    return tuple(out)


def cond_factors(magnifications: tuple[float, ...], cells: tuple[int, ...]) -> tuple[int, ...]:
    """Per level, finest first: how many of its cells one cell of its parent covers per side (0 for the
    layout level). ValueError unless each is a whole number >= 1, and >= 2 between two levels of one
    magnification (only pixels under a latent of the same image: anything else would add nothing)."""
    out = []
    for k, zoom in enumerate(level_zooms(magnifications)):
        f = zoom * cells[k + 1] / cells[k]
        if f < (2 if zoom == 1 else 1) or abs(f - round(f)) > 1e-6:
            raise ValueError(f"level {k + 1} ({magnifications[k + 1]:g}x, {cells[k + 1]} px cells) does not cover "
                             f"whole cells of level {k} ({magnifications[k]:g}x, {cells[k]} px cells)"
                             + (" with more than one of its own" if zoom == 1 else ""))
        out.append(int(round(f)))
    return (*out, 0)


def fold(x: np.ndarray, cell: int) -> np.ndarray:
    """(C, H, W) -> (C cell^2, H / cell, W / cell), channel order as torch.nn.functional.pixel_unshuffle."""
    c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(c, h // cell, cell, w // cell, cell).transpose(0, 2, 4, 1, 3).reshape(c * cell * cell, h // cell, w // cell))


def unfold(x: np.ndarray, cell: int) -> np.ndarray:
    """Inverse of `fold`: (C cell^2, h, w) -> (C, h cell, w cell)."""
    cc, h, w = x.shape
    c = cc // (cell * cell)
    return np.ascontiguousarray(x.reshape(c, cell, cell, h, w).transpose(0, 3, 1, 4, 2).reshape(c, h * cell, w * cell))
