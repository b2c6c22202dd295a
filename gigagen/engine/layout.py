"""A layout level made of fragments of real tissue: the exemplar at the layout's magnification, each copy turned,
rescaled, bent and cut to an irregular outline, scattered over the slide's background.

Why not sample the layout: the layout model learnt from one piece of tissue 148 x 138 px large at 1.25x, in 16 x 16
latent crops, and samples an amorphous purple-pink mass with no epidermis along a surface and no dermis beneath it;
conditioned on that, the 5x level comes out as mush, and every level below inherits it (model card, 2026-12-07
twenty-eighth). Given the real 1.25x latent instead, the same 5x and 20x networks draw skin. With one region of
training data the honest source of a layout is that region, deformed: a slide of several sections of one tissue,
as real slides often are. Only the layout is copied; the 5x and 20x levels are still sampled below it.

Everything is local: the slide is cut into cells of `cell` px; each cell holds at most one fragment, centred in it,
whose every parameter is drawn from a generator seeded by (seed, level, cell). A region of the level is rendered from
the fragments of the cells that can reach it, composited by a rule that does not depend on order (the most opaque
fragment wins a pixel, ties to the first cell in raster order), so a tile equals the same region of the whole level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gigagen.engine.decode import level_tiles
from gigagen.engine.exemplar import Encode
from gigagen.engine.grid import dihedral

INSET = 0.85  # the outline's ellipse, as a fraction of the exemplar's half sides: clear of the scan's straight cut edges
FEATHER = 0.03  # the outline's soft edge, as a fraction of the fragment's radius (about 2 px: a cut, not a fade)
LOBES = ((2, 1.0), (3, 1.0), (5, 1.0), (8, 0.5), (13, 0.5))  # the outline's dents: (fold, relative depth)
SPACINGS = (16, 64)  # px at the layout's magnification: control-point spacings of the bend (fibre bundles, outline)
BEND_BOUND = 5.0  # in std: control points are clipped to 3, and cubic spline interpolation stays within 1.55x of them


@dataclass(frozen=True)
class LayoutSpec:
    """How a bundle's layout level is made from its exemplar (BundleConfig.layout); sizes in px at the layout's
    magnification."""

    cell: int = 144  # one fragment per cell at most: 144 px at 1.25x is 1.15 mm, about the exemplar's size
    presence: float = 1.0  # the chance that a cell holds a fragment (1: no 4096^2 px slide is nearly empty)
    scale: float = 0.15  # fragments are rescaled by a factor uniform in 1 +- scale
    strain: float = 0.08  # the bend: control-point displacement std as a fraction of its spacing
    lobes: float = 0.1  # the outline's irregularity: the greatest depth of its 2-, 3- and 5-fold dents (finer ones half)


def named_layout(name: str) -> LayoutSpec | None:
    """A layout by the name `gigagen slide --layout` and set_sampling_defaults.py give it (config.LAYOUTS): "sampled"
    is no fragment layout, "fragments" is LayoutSpec's defaults."""
    return LayoutSpec() if name == "fragments" else None


def validate_layout(spec: LayoutSpec) -> None:
    if spec.cell < 16 or not 0 < spec.presence <= 1:
        raise ValueError("layout cell must be >= 16 px and presence in (0, 1]")
    if not 0 <= spec.scale < 1 or spec.strain < 0 or not 0 <= spec.lobes <= 0.25:
        raise ValueError("layout scale must be in [0, 1), strain >= 0 and lobes in [0, 0.25]")


@dataclass(frozen=True)
class LayoutExemplar:
    """The exemplar at the layout's magnification: pixels, tissue mask and the background colour around it."""

    pixels: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    background: np.ndarray  # (3,) float32



def layout_exemplar(pixels: np.ndarray, mask: np.ndarray) -> LayoutExemplar:
    if not mask.any() or mask.all():
        raise ValueError("the layout exemplar needs both tissue and background")
    return LayoutExemplar(pixels, mask, np.median(pixels[~mask].astype(np.float32), axis=0))


def reach(ex: LayoutExemplar, spec: LayoutSpec) -> float:
    """A bound, in px, on how far a fragment's tissue can lie from its centre: its outline lies within the ellipse
    inscribed in the exemplar, displaced by at most the bend's bound (_bend) and then scaled by at most 1 + scale."""
    h, w = ex.mask.shape
    bend = np.sqrt(2) * sum(BEND_BOUND * spec.strain * sp for sp in SPACINGS)
    return (1 + spec.scale) * (0.5 * float(np.hypot(h, w)) + bend)


def _rng(seed: int, level: int, gy: int, gx: int) -> np.random.Generator:
    # cell indices may be negative (cells left of or above the slide reach into it): wrap them to 32 bits
    return np.random.default_rng([seed & 0xFFFFFFFF, level, gy & 0xFFFFFFFF, gx & 0xFFFFFFFF, 0x1A7])


def _fragment(ex: LayoutExemplar, spec: LayoutSpec, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """One fragment at output offsets (yy, xx) px from its centre -> (pixels (..., 3) float32, alpha (...,)).

    The output is pulled back to the exemplar: turned by a uniform angle and one of the 8 dihedral orientations,
    scaled, and bent by a smooth random field defined on a fixed grid around the centre (so it does not depend on
    which pixels are asked for)."""
    from scipy import ndimage

    o = int(rng.integers(8))
    img, m = dihedral(ex.pixels, o), dihedral(ex.mask, o)
    h, w = m.shape
    theta, s = rng.uniform(-np.pi, np.pi), rng.uniform(1 - spec.scale, 1 + spec.scale)
    lobes = [(rng.uniform(0, spec.lobes) * amp, k, rng.uniform(0, 2 * np.pi)) for k, amp in LOBES]
    r = int(np.ceil(reach(ex, spec)))
    dy, dx = _bend(rng, spec.strain, 2 * r + 1)
    at = (np.clip(yy + r, 0, 2 * r), np.clip(xx + r, 0, 2 * r))
    y, x = yy / s, xx / s
    sy = np.cos(theta) * y - np.sin(theta) * x + ndimage.map_coordinates(dy, at, order=1)
    sx = np.sin(theta) * y + np.cos(theta) * x + ndimage.map_coordinates(dx, at, order=1)
    # the outline: an ellipse inside the exemplar, dented by the lobes, so the region's straight cut edges (where the
    # scanned region ended, not where the tissue did) never show
    phi = np.arctan2(sy, sx)
    rad = INSET * (1.0 - sum(a * (1 + np.cos(k * phi + p)) / 2 for a, k, p in lobes))
    ell = np.hypot(sy / (h / 2), sx / (w / 2)) / rad
    window = np.clip((1 - ell) / FEATHER, 0, 1)
    coords = (sy + (h - 1) / 2, sx + (w - 1) / 2)
    alpha = ndimage.map_coordinates(m.astype(np.float32), coords, order=1, mode="constant") * window
    px = np.stack([ndimage.map_coordinates(img[..., c].astype(np.float32), coords, order=3, mode="nearest")
                   for c in range(3)], -1)
    return px, alpha.astype(np.float32)


def _bend(rng: np.random.Generator, strain: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) displacement in px on the fragment's own n x n grid: as train.data.elastic_field, with the control
    points clipped to 3 std, so the displacement is bounded and reach() holds."""
    from scipy import ndimage

    dy, dx = np.zeros((n, n), np.float32), np.zeros((n, n), np.float32)
    for sp in SPACINGS:
        k = n // sp + 2
        for d in (dy, dx):
            ctrl = np.clip(rng.normal(0.0, 1.0, size=(k, k)), -3, 3).astype(np.float32) * strain * sp
            d += ndimage.zoom(ctrl, (n + sp) / k, order=3, mode="nearest")[:n, :n]
    return dy, dx


def _within(offsets: np.ndarray, far: float) -> slice | None:
    """The slice of a row (or column) of pixel offsets from a fragment's centre that lie within `far` of it, or None."""
    idx = np.flatnonzero(np.abs(offsets) <= far)
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


def render_layout(ex: LayoutExemplar, spec: LayoutSpec, seed: int, level: int, y0: int, x0: int, h: int, w: int
                  ) -> np.ndarray:
    """The layout's pixels in rows y0..y0+h, columns x0..x0+w of the level -> (h, w, 3) uint8."""
    g, far = spec.cell, reach(ex, spec)
    rows, cols = np.arange(y0, y0 + h, dtype=np.float32), np.arange(x0, x0 + w, dtype=np.float32)
    best = np.zeros((h, w), np.float32)
    colour = np.broadcast_to(ex.background, (h, w, 3)).copy()
    for gy in range(int(np.floor((y0 - far) / g)), int(np.floor((y0 + h + far) / g)) + 1):
        for gx in range(int(np.floor((x0 - far) / g)), int(np.floor((x0 + w + far) / g)) + 1):
            rng = _rng(seed, level, gy, gx)
            if rng.uniform() >= spec.presence:
                continue
            cy, cx = (gy + rng.uniform(0.25, 0.75)) * g, (gx + rng.uniform(0.25, 0.75)) * g
            # only the box of pixels within reach of the centre (drawn after the centre, so the draws never depend on it)
            ys, xs = _within(rows - cy, far), _within(cols - cx, far)
            if ys is None or xs is None:
                continue
            oy, ox = np.broadcast_arrays((rows[ys] - cy)[:, None], (cols[xs] - cx)[None, :])
            px, alpha = _fragment(ex, spec, rng, oy, ox)
            take = alpha > best[ys, xs]  # the most opaque fragment wins a pixel; ties stay with the earlier cell
            best[ys, xs][take] = alpha[take]
            colour[ys, xs][take] = px[take]
    out = best[..., None] * colour + (1 - best[..., None]) * ex.background
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


ENCODE_HALO = 8  # latent cells of context around each tile the encoder sees (64 px at f8, as train.loop.encode_image)


def write_layout_level(store: Any, ex: LayoutExemplar, spec: LayoutSpec, encode: Encode, factor: int, n_steps: int,
                       on_tiles: Callable[[int], None] | None = None) -> None:
    """Write the layout level (the cascade's coarsest) from fragments instead of sampling it: each tile's pixels
    rendered with ENCODE_HALO cells of context and encoded, committed as the level's final state n_steps, so the
    cascade and --resume treat it like a sampled level (as engine.decode.decode_level does). Nothing to do once
    committed."""
    if store.completed() >= n_steps:
        return
    seed, level, e = store.spec.seed, store.spec.level, ENCODE_HALO
    for tile in level_tiles(store.spec, n_steps):
        h, w = tile.y1 - tile.y0 + 2 * e, tile.x1 - tile.x0 + 2 * e
        px = render_layout(ex, spec, seed, level, (tile.y0 - e) * factor, (tile.x0 - e) * factor, h * factor, w * factor)
        store.write(n_steps, tile, np.ascontiguousarray(encode(px)[:, e : h - e, e : w - e], dtype=np.float32))
        if on_tiles:
            on_tiles(1)
    store.commit(n_steps)
