"""Evaluation metrics comparing 20x H&E tiles: stain, nuclei, texture, Frechet distance, memorisation, AE fidelity.

All take (N, T, T, 3) uint8 tile stacks at 0.5 um/px. numpy/scipy/skimage; torch only for the feature
net and the autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gigagen.train.data import tissue_mask


def grid_tiles(rgb: np.ndarray, tile: int, stride: int, min_tissue: float = 0.5) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All tile x tile crops on a stride grid whose tissue fraction is >= min_tissue -> ((N, T, T, 3), [(y, x)])."""
    mask = tissue_mask(rgb)
    tiles, pos = [], []
    for y in range(0, rgb.shape[0] - tile + 1, stride):
        for x in range(0, rgb.shape[1] - tile + 1, stride):
            if mask[y : y + tile, x : x + tile].mean() >= min_tissue:
                tiles.append(rgb[y : y + tile, x : x + tile])
                pos.append((y, x))
    if not tiles:
        return np.zeros((0, tile, tile, 3), np.uint8), []
    return np.stack(tiles), pos


def _tissue_pixels(tiles: np.ndarray) -> np.ndarray:
    return np.stack([tissue_mask(t) for t in tiles])


def stain_concentrations(tiles: np.ndarray, max_pixels: int = 200_000, seed: int = 0) -> np.ndarray:
    """(K, 2) hematoxylin and eosin concentrations of tissue pixels by colour deconvolution (skimage rgb2hed)."""
    from skimage.color import rgb2hed

    masks = _tissue_pixels(tiles)
    px = tiles[masks]
    if len(px) == 0:
        return np.zeros((0, 2))
    rng = np.random.default_rng(seed)
    if len(px) > max_pixels:
        px = px[rng.choice(len(px), max_pixels, replace=False)]
    hed = rgb2hed(px[None])[0]
    return hed[:, :2]


@dataclass
class Nuclei:
    density_per_mm2: float  # nucleus-like objects per mm2 of tissue
    areas_um2: np.ndarray  # areas of every object


H_THRESHOLD = 0.05  # hematoxylin optical density of a nucleus, chosen on the real region


def nucleus_objects(rgb: np.ndarray, mpp: float, thr: float = H_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus-like objects of one (H, W, 3) uint8 image: connected regions of high hematoxylin (rgb2hed) of
    5..300 um2, in tissue -> (tissue mask, labels, label ids kept, their areas in um2)."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    tm = tissue_mask(rgb)
    h = ndimage.gaussian_filter(rgb2hed(rgb)[..., 0], 1.0)
    lab, n = ndimage.label(ndimage.binary_opening((h > thr) & tm, iterations=1))
    a = np.bincount(lab.ravel(), minlength=n + 1)[1:] * (mpp * mpp)
    keep = np.nonzero((a >= 5) & (a <= 300))[0]
    return tm, lab, keep + 1, a[keep]


def nucleus_centres(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """(N, 2) float (y, x) centres of an image's nucleus-like objects (nucleus_objects): where nucleus stamps
    mark the real nuclei (gigagen.engine.nuclei)."""
    from scipy import ndimage

    _, lab, ids, _ = nucleus_objects(rgb, mpp)
    return np.array(ndimage.center_of_mass(lab > 0, lab, ids), np.float64).reshape(-1, 2)


def nuclei(tiles: np.ndarray, mpp: float = 0.5, h_thresh: float | None = None) -> Nuclei:
    """Nucleus-like objects (nucleus_objects) per mm2 of tissue, and their areas.

    The hematoxylin threshold is fixed (default 0.05, chosen on the real region) so that paler or
    darker generated nuclei change the count rather than the threshold.
    """
    thr = H_THRESHOLD if h_thresh is None else h_thresh
    areas, tissue_px = [], 0
    for t in tiles:
        tm, _, _, a = nucleus_objects(t, mpp, thr)
        tissue_px += int(tm.sum())
        areas.extend(a.tolist())
    tissue_mm2 = tissue_px * mpp * mpp / 1e6
    return Nuclei(len(areas) / tissue_mm2 if tissue_mm2 > 0 else 0.0, np.array(areas))


def high_freq_energy(tiles: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """Per tile: fraction of grey-level spectral power (DC removed) above `cutoff` cycles/px (Nyquist = 0.5)."""
    g = tiles.astype(np.float32).mean(axis=3)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.rfft2(g)) ** 2
    fy = np.fft.fftfreq(g.shape[1])[:, None]
    fx = np.fft.rfftfreq(g.shape[2])[None, :]
    hi = np.sqrt(fy**2 + fx**2) > cutoff
    return p[:, hi].sum(axis=1) / np.maximum(p.sum(axis=(1, 2)), 1e-12)


def random_conv_features(tiles: np.ndarray, dim: int = 32, seed: int = 1234) -> np.ndarray:
    """(N, 2*dim) features of a fixed, seeded, untrained 4-layer conv net (mean and std pooled).

    Random-network features are a weak but honest offline stand-in for Inception features: no weights
    are downloaded, and the net is identical on every machine (seeded CPU init).
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    chans = [3, 16, 32, 32, dim]
    convs = []
    for a, b in zip(chans, chans[1:]):
        conv = nn.Conv2d(a, b, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (a * 9)) ** 0.5)
            conv.bias.zero_()
        convs.append(conv)
    feats = []
    with torch.no_grad():
        for i in range(0, len(tiles), 32):
            x = torch.from_numpy(tiles[i : i + 32]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            for conv in convs:
                x = torch.relu(conv(x))
            feats.append(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1).numpy())
    return np.concatenate(feats).astype(np.float64)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets (Heusel et al. 2017, eq. 6).

    tr((S1 S2)^1/2) is computed as tr((S1^1/2 S2 S1^1/2)^1/2), symmetric and stable for singular covariances.
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    r1 = _psd_sqrt(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def _norm_vectors(tiles: np.ndarray, size: int) -> np.ndarray:
    """Grey, downsampled, zero-mean unit-norm vectors for normalised cross-correlation."""
    from PIL import Image

    out = []
    for t in tiles:
        g = np.asarray(Image.fromarray(t).convert("L").resize((size, size), Image.Resampling.BOX), np.float32)
        g = g - g.mean()
        out.append(g.ravel() / max(np.linalg.norm(g), 1e-6))
    return np.stack(out)


def nearest_similarity(query: np.ndarray, bank: np.ndarray, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """For each query tile, the max normalised cross-correlation with any bank tile over the 8 orientations.

    Returns (similarity (N,), index of the nearest bank tile (N,)). 1.0 means an exact copy.
    """
    b = _norm_vectors(bank, size)
    best = np.full(len(query), -1.0)
    idx = np.zeros(len(query), np.int64)
    for k in range(8):
        q = query[:, :, ::-1] if k & 4 else query
        q = np.rot90(q, k & 3, axes=(1, 2))
        s = _norm_vectors(np.ascontiguousarray(q), size) @ b.T
        j = s.argmax(axis=1)
        v = s[np.arange(len(q)), j]
        better = v > best
        best[better], idx[better] = v[better], j[better]
    return best, idx


def ae_reconstruction(ae, rgb: np.ndarray, tile: int = 256, min_tissue: float = 0.5) -> tuple[float, float]:
    """Autoencoder PSNR (dB) and SSIM on tissue tiles of rgb (bf16 autocast, as at inference)."""
    import torch

    from gigagen.train.losses import psnr, ssim

    tiles, _ = grid_tiles(rgb, tile, tile, min_tissue)
    if len(tiles) == 0:
        return float("nan"), float("nan")
    ps, ss = [], []
    with torch.no_grad():
        for i in range(0, len(tiles), 8):
            x = torch.from_numpy(tiles[i : i + 8]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.autocast("cpu", dtype=torch.bfloat16):
                r = ae.decode(ae.encode(x)).float().clamp(-1, 1)
            r = torch.round((r + 1) * 127.5) / 127.5 - 1  # as written to uint8
            for a, b in zip(x, r):
                ps.append(psnr(a[None], b[None]))
                ss.append(ssim(a[None], b[None]).item())
    return float(np.mean(ps)), float(np.mean(ss))
