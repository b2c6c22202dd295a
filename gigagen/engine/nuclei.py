"""Nucleus stamps: where the nuclei of a decoded pixel level are, drawn as a point process and painted in.

Why: the 20x level draws real-size nuclei only when its 5x parent says where they are (real 5x pixels do; the
5x latent, and any deterministic reading of it, do not: MODEL_CARD.md, 2026-12-04). A bundle with stamps reads
its decoded level off the latent above as before, then paints a small black disc at each nucleus centre. In
training the centres are the real ones (found at 20x); in `gigagen slide` they are sampled: a Matern type-II
hard-core process (no two centres closer than `spacing`) whose intensity is a linear function of the reading's
local stain densities, fitted to the training image's real centres and calibrated so the count matches.

Everything here is a pure function of its inputs; the slide's centres are a function of (seed, level, pixel
position) through engine.noise, so a tile computed with enough halo agrees with the untiled level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from gigagen.engine.noise import gaussian_region

NOISE_KEY = 0x5741  # the `step` key of the stamps' noise: above any DDIM step index
# a stamp's colour: black, which no H&E pixel is, so the level below cannot take the reading's own dark texture for
# a stamp (the real nuclei's median colour was tried first: at 5x it is the epidermis' own purple, and the 20x level
# learnt to ignore stamps of it; MODEL_CARD.md, 2026-12-04 fourth)
MARKER = (0.0, 0.0, 0.0)
NUCLEUS_AREA_UM2 = 28.0  # a typical nucleus: the median detected area in CMU-1-Small-Region is 24.5-28.8 um2


@dataclass(frozen=True)
class StampSpec:
    """How a bundle paints nuclei into its decoded level (BundleConfig.nucleus_stamps); lengths in that level's px."""

    colour: tuple[float, float, float]  # RGB of a stamp's centre (MARKER)
    radius: float  # disc radius (a 0.5 px soft edge outside it)
    spacing: float  # hard-core distance of the sampled centres
    window: int  # side of the box the stain densities are averaged over
    weights: tuple[float, float, float, float]  # intensity per px = scale * max(0, w . (H, E, grey, 1))
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "StampSpec":
        return StampSpec(colour=tuple(d["colour"]), radius=float(d["radius"]), spacing=float(d["spacing"]),  # type: ignore[arg-type]
                         window=int(d["window"]), weights=tuple(d["weights"]), scale=float(d["scale"]))  # type: ignore[arg-type]

    @property
    def halo(self) -> int:
        """Pixels of context a tile needs so its centres and discs equal the untiled level's."""
        return int(np.ceil(self.window / 2 + self.spacing + self.radius)) + 2


MIN_SATURATION = 0.07  # colour saturation (max - min channel) above which a pixel is stained


def stained(rgb: np.ndarray, otsu: bool = False) -> np.ndarray:
    """(H, W) bool: pixels with stain: saturated, or darker than the background and a little saturated. With the
    fixed threshold (default) a pixel's answer does not depend on the tile around it; with `otsu`
    (gigagen.train.data.tissue_mask) the threshold rises to the image's Otsu level of saturation."""
    x = rgb.astype(np.float32) / 255.0
    sat = x.max(axis=2) - x.min(axis=2)
    thr = max(_otsu(sat), MIN_SATURATION) if otsu else MIN_SATURATION
    return (sat > thr) | ((x.mean(axis=2) < 0.85) & (sat > 0.03))


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    try:
        return float(threshold_otsu(values))
    except ValueError:  # a single value (e.g. blank background): no threshold, the fixed one applies
        return 0.0


def features(rgb: np.ndarray, window: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 4): hematoxylin and eosin optical densities and grey level (0..1), each
    averaged over a `window` box, and a constant 1."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    grey = rgb.astype(np.float32).mean(axis=2) / 255.0
    chans = [ndimage.uniform_filter(c.astype(np.float32), window, mode="nearest") for c in (hed[..., 0], hed[..., 1], grey)]
    return np.stack(chans + [np.ones_like(grey)], axis=-1)


def intensity(rgb: np.ndarray, spec: StampSpec) -> np.ndarray:
    """Expected stamp candidates per pixel before hard-core thinning, (H, W) in [0, 1]; 0 off stained pixels."""
    return _intensity(features(rgb, spec.window), stained(rgb), spec)


def _intensity(f: np.ndarray, on: np.ndarray, spec: StampSpec) -> np.ndarray:
    lam = f @ np.asarray(spec.weights, np.float32)
    return np.clip(spec.scale * np.maximum(lam, 0.0) * on, 0.0, 1.0).astype(np.float32)


def sample_centres(lam: np.ndarray, spec: StampSpec, seed: int, level: int, y0: int, x0: int) -> np.ndarray:
    """Centres (N, 2), in the coordinates of `lam`'s array, of the hard-core process over a region whose top-left
    pixel is (y0, x0) of the level: pixel p is a candidate when its uniform u_p < lam_p (its centre offset within
    the pixel from two more uniforms), marked u_p / lam_p, and kept when no candidate within `spacing` has a
    lower mark (Matern II). Exact for every pixel at least `spacing` + 1 px from the region's edge."""
    from scipy import ndimage
    from scipy.special import ndtr

    h, w = lam.shape
    u = ndtr(gaussian_region(seed, level, NOISE_KEY, y0, y0 + h, x0, x0 + w, 3))
    cand = u[0] < lam
    mark = np.where(cand, u[0] / np.maximum(lam, 1e-12), np.inf)
    r = int(np.ceil(spec.spacing)) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    lowest = ndimage.minimum_filter(mark, footprint=(yy**2 + xx**2) <= spec.spacing**2, mode="constant", cval=np.inf)
    ys, xs = np.nonzero(cand & (mark <= lowest))
    return np.stack([ys + u[1, ys, xs], xs + u[2, ys, xs]], axis=1)


def stamp(rgb: np.ndarray, centres: np.ndarray, spec: StampSpec) -> np.ndarray:
    """A copy of (H, W, 3) uint8 `rgb` with a disc of the stamp colour at each centre (pixel (i, j) covers
    [i, i + 1) x [j, j + 1); a disc's coverage falls linearly from 1 at `radius` to 0 half a pixel further)."""
    h, w, _ = rgb.shape
    cover = np.zeros((h, w), np.float32)
    r = int(np.ceil(spec.radius + 0.5))
    for cy, cx in centres:
        ya, yb = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
        xa, xb = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        if ya >= yb or xa >= xb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb]
        d = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
        cover[ya:yb, xa:xb] = np.maximum(cover[ya:yb, xa:xb], np.clip(spec.radius + 0.5 - d, 0.0, 1.0) * 2.0)
    a = np.clip(cover, 0.0, 1.0)[..., None]
    out = rgb.astype(np.float32) * (1.0 - a) + np.asarray(spec.colour, np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def sampled_stamps(rgb: np.ndarray, spec: StampSpec, seed: int, level: int, y0: int = 0, x0: int = 0) -> np.ndarray:
    """A reading (H, W, 3) uint8 whose top-left pixel is (y0, x0) of the level, with stamps at sampled centres:
    what `gigagen slide` paints. Exact for pixels at least `spec.halo` from the region's edge (or at the
    level's own edge)."""
    return stamp(rgb, sample_centres(intensity(rgb, spec), spec, seed, level, y0, x0), spec)


def fit_spec(readings: list[np.ndarray], centres: list[np.ndarray], *, mpp: float, window: int = 8, seed: int = 0) -> StampSpec:
    """A StampSpec for one level from training images: `readings` are the level as the slide will have it
    (the level decoder's reading), `centres` the real nucleus centres at that level's px. The intensity's weights
    are least squares of the real centre density on the readings' features on stained pixels; its scale then makes
    the hard-core process's count over the readings the real count."""
    from scipy import ndimage

    feats = [(features(rd, window), stained(rd)) for rd in readings]
    xs, ys = [], []
    for (f, on), rd, c in zip(feats, readings, centres):
        count = np.zeros(rd.shape[:2], np.float32)
        iy = np.clip(c[:, 0].astype(int), 0, rd.shape[0] - 1)
        ix = np.clip(c[:, 1].astype(int), 0, rd.shape[1] - 1)
        np.add.at(count, (iy, ix), 1.0)
        xs.append(f[on])  # the intensity is 0 off stained pixels: fit it where it is not
        ys.append(ndimage.uniform_filter(count, window, mode="nearest")[on])
    w, *_ = np.linalg.lstsq(np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64), rcond=None)
    # a disc a little smaller than a typical nucleus (a mark, not a drawing); centres no closer than its diameter
    radius = float(np.sqrt(NUCLEUS_AREA_UM2 / np.pi) / mpp) * 0.6
    spec = StampSpec(colour=MARKER, radius=round(radius, 3), spacing=round(2.0 * radius / 0.6, 3),  # type: ignore[arg-type]
                     window=window, weights=tuple(float(v) for v in w), scale=1.0)  # type: ignore[arg-type]
    want = sum(len(c) for c in centres)
    lo, hi = 0.25, 16.0
    for _ in range(20):  # bisection: the count rises with the scale
        mid = (lo * hi) ** 0.5
        s = replace(spec, scale=mid)
        got = sum(len(sample_centres(_intensity(f, on, s), s, seed, 0, 0, 0)) for f, on in feats)
        lo, hi = (mid, hi) if got < want else (lo, mid)
    return replace(spec, scale=round((lo * hi) ** 0.5, 5))
