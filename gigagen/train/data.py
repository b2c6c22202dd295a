"""Training data from slides and images: reading at a pixel size, tissue detection, a held-out band,
the cascade's magnification pyramid, histology-safe augmentations and crop sampling. numpy only.

Images are held in memory at the finest training magnification (fine for regions and small slides;
a multi-gigapixel slide should be given as a cropped region or read at a coarser level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigagen.engine.grid import dihedral  # noqa: F401  (training's augmentation; engine.exemplar's orientations)
from gigagen.engine.nuclei import stained
from gigagen.errors import UserError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg"}
TIFF_SUFFIXES = {".tif", ".tiff"}
MAX_PIXELS = 400_000_000  # refuse to hold more than this (about 1.2 GB RGB) at the training pixel size


def _read_openslide(path: Path) -> tuple[np.ndarray, float | None] | None:
    try:
        import openslide
    except ImportError:
        return None
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception:  # noqa: BLE001 - not an OpenSlide format; try the next reader
        return None
    w, h = slide.dimensions
    if w * h > MAX_PIXELS:
        raise UserError(f"{path} is {w}x{h} px; crop a region of at most {MAX_PIXELS // 10**6} MP for training")
    mpp = slide.properties.get("openslide.mpp-x")
    rgb = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    return rgb, float(mpp) if mpp else None


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tf:
        page = tf.pages[0]
        rgb = page.asarray()
        mpp = None
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            if num and unit in (2, 3):  # inch, cm
                mpp = (25400.0 if unit == 2 else 10000.0) * den / num
    if rgb.ndim == 3 and rgb.shape[0] in (3, 4) and rgb.shape[-1] not in (3, 4):
        rgb = np.moveaxis(rgb, 0, -1)
    return rgb[..., :3].astype(np.uint8), mpp


def read_image(path: str | Path, mpp: float | None = None) -> tuple[np.ndarray, float]:
    """Any OpenSlide/tifffile/PIL image -> ((H, W, 3) uint8, micrometres per pixel).

    The pixel size comes from `mpp` when given, else from the file; UserError when neither has it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training image not found: {path}")
    got: tuple[np.ndarray, float | None] | None = None
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            got = (np.asarray(im.convert("RGB")), None)
    else:
        got = _read_openslide(path)
        if got is None and suffix in TIFF_SUFFIXES:
            got = _read_tiff(path)
    if got is None:
        raise UserError(f"cannot read {path}: not a slide OpenSlide knows, a TIFF, PNG or JPEG")
    rgb, file_mpp = got
    use = mpp if mpp is not None else file_mpp
    if not use or use <= 0:
        raise UserError(f"{path} has no pixel size; give it with --mpp (micrometres per pixel)")
    return np.ascontiguousarray(rgb), float(use)


def resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Resample (H, W, 3) uint8 by `scale` (area-like for downsampling)."""
    if abs(scale - 1.0) < 1e-3:
        return rgb
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS))


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Box-average by an integer factor; (H, W, 3) with H, W multiples of factor."""
    h, w = rgb.shape[:2]
    x = rgb.reshape(h // factor, factor, w // factor, factor, 3).astype(np.float32).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, 3) uint8 smoothed by a Gaussian of `sigma` pixels (reflected at the borders); sigma 0 returns it as is."""
    if sigma <= 0:
        return rgb
    from scipy import ndimage

    x = ndimage.gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: stained, non-white pixels (Otsu on saturation, at least 0.07), closed and
    opened."""
    from scipy import ndimage

    mask = ndimage.binary_closing(stained(rgb, otsu=True), iterations=2)
    return ndimage.binary_opening(mask, iterations=1)


def split_holdout(rgb: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out): the bottom `frac` of the rows is held out, never trained on.

    A horizontal band rather than a vertical strip: in CMU-1-Small-Region the tissue runs top to
    bottom, so a band across it keeps epidermis and dermis in both parts.
    """
    cut = int(round(rgb.shape[0] * (1.0 - frac)))
    return rgb[:cut], rgb[cut:]


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.05) -> np.ndarray:
    """Mild stain variation: scale and shift H, E and DAB concentrations by colour deconvolution.

    Ruifrok & Johnston 2001 stain vectors (skimage's hed_from_rgb); optical density OD = -log((I+1)/256)
    is exactly invertible, so strength 0 returns the input.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    if strength <= 0:
        return rgb
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    conc = od @ hed_from_rgb.astype(np.float32)
    alpha = rng.uniform(1 - strength, 1 + strength, size=3).astype(np.float32)
    beta = (rng.uniform(-strength, strength, size=3) * 0.05).astype(np.float32)
    od = (conc * alpha + beta) @ rgb_from_hed.astype(np.float32)
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


ELASTIC_SPACINGS = (64, 256)  # px at the finest level: control-point spacings of the two deformation scales
ELASTIC_STRAIN = 0.05  # control-point displacement std as a fraction of its spacing, at each scale


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, spacings: tuple[int, ...] = ELASTIC_SPACINGS,
                  strain: float = ELASTIC_STRAIN) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) displacement in px of a smooth random deformation of an (H, W) image: at each spacing s,
    control points every s px move by N(0, (strain * s)^2) px, cubic-interpolated in between (the
    B-spline-like field of Simard et al. 2003 and torchio's RandomElasticDeformation)."""
    from scipy import ndimage

    h, w = shape
    field = [np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)]
    for s in spacings:
        gh, gw = h // s + 2, w // s + 2
        for d in field:
            ctrl = rng.normal(0.0, strain * s, size=(gh, gw)).astype(np.float32)
            d += ndimage.zoom(ctrl, ((h + s) / gh, (w + s) / gw), order=3, mode="nearest")[:h, :w]
    return field[0], field[1]


def elastic_warp(rgb: np.ndarray, rng: np.random.Generator, spacings: tuple[int, ...] = ELASTIC_SPACINGS,
                 strain: float = ELASTIC_STRAIN) -> np.ndarray:
    """(H, W, 3) uint8 resampled through `elastic_field` (cubic, mirrored at the borders): new tissue
    geometry from the same tissue. The default scales bend collagen bundles (64 px = 32 um at 20x) and
    the tissue's outline (256 px): displacements of about 11 px (std), local strain std 0.10 and under
    0.35 at the 99th percentile (tests/test_validation.py). strain 0 returns the input."""
    from scipy import ndimage

    if strain <= 0:
        return rgb
    h, w = rgb.shape[:2]
    dy, dx = elastic_field((h, w), rng, spacings, strain)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = (yy + dy, xx + dx)
    out = np.empty_like(rgb)
    for c in range(rgb.shape[2]):  # cubic: bilinear resampling would blur away the fine texture it should teach
        v = ndimage.map_coordinates(rgb[..., c].astype(np.float32), coords, order=3, mode="mirror")
        out[..., c] = np.clip(np.rint(v), 0, 255)
    return out


@dataclass
class LevelImages:
    """One training image at every cascade magnification (finest first), aligned on a common grid."""

    images: list[np.ndarray]  # (H_k, W_k, 3) uint8, H_k = H_0 / factor^k
    masks: list[np.ndarray]  # (H_k, W_k) bool tissue


def build_levels(rgb: np.ndarray, zooms: tuple[int, ...], align: int) -> LevelImages:
    """Crop rgb to a multiple of prod(zooms)*align and box-downsample it level by level (zooms[k] from level k
    to k + 1; 1 where a magnification repeats, the same image twice), with tissue masks."""
    m = math.prod(zooms) * align
    h, w = (rgb.shape[0] // m) * m, (rgb.shape[1] // m) * m
    if h == 0 or w == 0:
        raise UserError(f"training image {rgb.shape[1]}x{rgb.shape[0]} is smaller than {m} px at the finest magnification")
    images = [rgb[:h, :w]]
    for z in zooms:
        images.append(downsample(images[-1], z) if z > 1 else images[-1])
    mask0 = tissue_mask(images[-1])
    masks = []
    for k in range(len(images)):
        rep = math.prod(zooms[k:])
        masks.append(np.repeat(np.repeat(mask0, rep, axis=0), rep, axis=1))
    return LevelImages(images, masks)


def sample_crop(
    img: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator, min_tissue: float, align: int = 1, tries: int = 30
) -> tuple[int, int]:
    """Top-left (y, x), multiples of `align`, of a size x size crop with tissue fraction >= min_tissue if found."""
    h, w = img.shape[:2]
    best, best_frac = (0, 0), -1.0
    for _ in range(tries):
        y = int(rng.integers(0, (h - size) // align + 1)) * align
        x = int(rng.integers(0, (w - size) // align + 1)) * align
        frac = float(mask[y : y + size, x : x + size].mean())
        if frac >= min_tissue:
            return y, x
        if frac > best_frac:
            best, best_frac = (y, x), frac
    return best


def to_tensor_range(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    return np.moveaxis(rgb.astype(np.float32) / 127.5 - 1.0, -1, -3)
