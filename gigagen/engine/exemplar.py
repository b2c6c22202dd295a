"""Exemplar synthesis: a pixel level read off the latent of its own magnification by copying patches of real pixels.

A 5x latent cell (8 x 8 px at f8) holds the tissue's layout but not where its nuclei are, and a network's reading
of it draws them smeared or as hatching (model card, 2026-12-04). This module draws them from an exemplar instead:
the real pixels of the training region at that magnification, in its 8 orientations. It is image analogies
(Hertzmann et al. 2001) solved by texture optimisation (Kwatra et al. 2005), in a form whose every step is local:

- the output is covered by patches of `patch` px on a grid of stride patch / 2, in the level's global pixel grid;
- each patch starts from the exemplar patch whose *guide* (the autoencoder's decoding of the exemplar's own latent)
  best matches the output's guide (the decoding of the sampled latent), among the `candidates` exemplar cells whose
  latent neighbourhoods are nearest the output cell's;
- `iters` Jacobi passes then let every patch choose among those, its four neighbours' sources shifted by the stride
  (so copied regions grow coherent) and a few jittered copies of its own, by guide distance plus distance to the
  current output; the output is each pixel taken from the patch whose centre covers it (no averaging, so nuclei
  stay crisp).

Every choice depends only on the latent, the guide and positions within a bounded radius (`ExemplarSpec.halo`),
and the jitter is a hash of (seed, level, pass, grid position): a tile synthesised with that much context equals
the untiled level, whatever the tile layout or order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gigagen.engine.grid import dihedral

Encode = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> the level's scaled latent (C, H/f, W/f)
Decode = Callable[[np.ndarray], np.ndarray]  # (1, C, h, w) scaled latent -> (1, 3, h*f, w*f) in [-1, 1]
ORIENTATIONS = 8


@dataclass(frozen=True)
class ExemplarSpec:
    """How a bundle's exemplar level is synthesised (BundleConfig.exemplar); height and width are the exemplar's."""

    height: int
    width: int
    patch: int = 8
    iters: int = 4
    candidates: int = 8
    guide_weight: float = 1.0
    jitter: int = 2
    coherence: float = 0.0  # a neighbour's source, continued, costs 1 / (1 + coherence) of its distance

    @property
    def stride(self) -> int:
        return self.patch // 2

    def halo(self, factor: int) -> int:
        """Pixels of context that make a tile equal the untiled level: each pass reaches one stride further (a
        neighbour's source and the output its patch covers), plus the first choice (a latent cell's neighbourhood
        and the patch) and the final paste; rounded up to whole latent cells."""
        px = (self.iters + 2) * self.stride + self.patch + 2 * factor
        return -(-px // factor) * factor


def validate_spec(spec: ExemplarSpec, factor: int) -> None:
    if spec.patch < 4 or spec.patch % 4 or factor % spec.stride:
        raise ValueError(f"exemplar patch must be a multiple of 4 whose half divides the autoencoder factor {factor}")
    if min(spec.iters, spec.jitter, spec.guide_weight, spec.coherence) < 0 or spec.candidates < 1:
        raise ValueError("exemplar iters, jitter, guide_weight and coherence must be >= 0 and candidates >= 1")
    if min(spec.height, spec.width) < 4 * factor:
        raise ValueError(f"the exemplar must be at least {4 * factor} px on each side")


def cell_features(z: np.ndarray) -> np.ndarray:
    """(C, h, w) latent -> (h*w, 9C): each cell's 3 x 3 neighbourhood (edges repeated), Gaussian-weighted (sigma 1
    cell) so the cell itself counts most."""
    c, h, w = z.shape
    zp = np.pad(z, ((0, 0), (1, 1), (1, 1)), mode="edge")
    parts = [np.exp(-(dy * dy + dx * dx) / 2.0) * zp[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.concatenate(parts, 0).reshape(9 * c, h * w).T.astype(np.float32)


@dataclass
class ExemplarBank:
    """The exemplar prepared for synthesis: pixels and guide of each orientation (padded to one square, [-1, 1],
    channels last: 3 pixel then 3 guide channels), each orientation's size, and every latent cell's features
    and (orientation, row, col)."""

    images: torch.Tensor  # (8, S, S, 6) float32
    sizes: torch.Tensor  # (8, 2) int64: valid (H, W) of each orientation
    features: torch.Tensor  # (N, 9C)
    sq_norms: torch.Tensor  # (N,)
    cells: torch.Tensor  # (N, 3) int64
    factor: int


def build_bank(pixels: np.ndarray, encode: Encode, decode: Decode, factor: int) -> ExemplarBank:
    """The bank of an (H, W, 3) uint8 exemplar: each orientation cut to whole latent cells, encoded, and decoded
    again as its guide (the same reading of a latent the output's guide is, rounded to uint8 as that one is)."""
    side = max(pixels.shape[:2]) // factor * factor
    images, sizes, feats, cells = [], [], [], []
    for o in range(ORIENTATIONS):
        img = dihedral(pixels, o)
        h, w = img.shape[0] // factor * factor, img.shape[1] // factor * factor
        img = np.ascontiguousarray(img[:h, :w])
        z = encode(img)
        guide = np.rint((decode(z[None])[0].transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255)  # as a slide's level holds it
        canvas = np.zeros((side, side, 6), np.float32)
        canvas[:h, :w, :3] = img.astype(np.float32) / 127.5 - 1.0
        canvas[:h, :w, 3:] = guide / 127.5 - 1.0
        images.append(canvas)
        sizes.append((h, w))
        feats.append(cell_features(z))
        yy, xx = np.meshgrid(np.arange(h // factor), np.arange(w // factor), indexing="ij")
        cells.append(np.stack([np.full(yy.size, o), yy.ravel(), xx.ravel()], 1))
    f = torch.from_numpy(np.concatenate(feats))
    return ExemplarBank(torch.from_numpy(np.stack(images)), torch.tensor(sizes), f, (f * f).sum(1),
                        torch.from_numpy(np.concatenate(cells)).long(), factor)


def _hash(*keys: torch.Tensor | int) -> torch.Tensor:
    """A 62-bit mix of integer keys (broadcast), splitmix64-style in int64 arithmetic (wrap-around is fine)."""
    h = torch.zeros((), dtype=torch.int64)
    for k in keys:
        h = (h ^ torch.as_tensor(k, dtype=torch.int64)) * 0x5851F42D4C957F2D + 0x14057B7EF767814F
        h = h ^ (h >> 29)
    return h & ((1 << 62) - 1)


class _Patches:
    """Gathers p x p patches of the bank at (orientation, y, x), clamped into each orientation's valid area."""

    def __init__(self, bank: ExemplarBank, p: int):
        self.bank, self.p = bank, p
        side = bank.images.shape[1]
        self.flat = bank.images.reshape(-1, 6)
        self.side = side
        d = torch.arange(p)
        self.offsets = (d[:, None] * side + d[None, :]).reshape(-1)  # (p*p,) within one orientation's canvas

    def clamp(self, o: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hw = self.bank.sizes[o]
        return o, y.clamp(min=0).minimum(hw[..., 0] - self.p), x.clamp(min=0).minimum(hw[..., 1] - self.p)

    def __call__(self, o: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(...,) sources -> (..., p*p, 6)."""
        base = (o * self.side + y) * self.side + x
        return self.flat[base[..., None] + self.offsets]


def _grid_patches(img: torch.Tensor, n_y: int, n_x: int, s: int, p: int) -> torch.Tensor:
    """(H, W, C) -> (n_y, n_x, p*p, C): the patches of the output grid (top-left corners at multiples of s)."""
    c = img.shape[-1]
    return img.unfold(0, p, s).unfold(1, p, s)[:n_y, :n_x].permute(0, 1, 3, 4, 2).reshape(n_y, n_x, p * p, c)


def _paste(patches: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Each output pixel from the patch whose central s x s block covers it, the region's outer s/2 px from the
    patches of its edge: (n_y, n_x, p*p, C) -> (h, w, C). No pixel is a blend of two patches."""
    n_y, n_x, pp, c = patches.shape
    p = int(round(pp ** 0.5))
    q = (p - s) // 2
    grid = patches.reshape(n_y, n_x, p, p, c)
    rows = [slice(0, q + s)] + [slice(q, q + s)] * (n_y - 2) + [slice(q, p)] if n_y > 1 else [slice(0, p)]
    cols = [slice(0, q + s)] + [slice(q, q + s)] * (n_x - 2) + [slice(q, p)] if n_x > 1 else [slice(0, p)]
    return torch.cat([torch.cat([grid[i, j, rows[i], cols[j]] for j in range(n_x)], 1) for i in range(n_y)], 0)


def _nearest_cells(bank: ExemplarBank, z: np.ndarray, k: int, chunk: int = 2048) -> torch.Tensor:
    """(h, w, k) bank rows of the k exemplar cells whose latent neighbourhoods are nearest each cell of z's."""
    q = torch.from_numpy(cell_features(z))
    k = min(k, bank.features.shape[0])
    # squared distance less the query's own norm, which is the same along a row and cannot change its order
    out = [((-2 * part) @ bank.features.T + bank.sq_norms[None]).topk(k, dim=1, largest=False).indices
           for part in q.split(chunk)]
    return torch.cat(out).reshape(z.shape[1], z.shape[2], k)


def synthesize(bank: ExemplarBank, z: np.ndarray, guide: np.ndarray, spec: ExemplarSpec, seed: int, level: int,
               y0: int = 0, x0: int = 0, rows: int = 16) -> np.ndarray:
    """Pixels of a region from its scaled latent z (C, h, w) and guide (h*f, w*f, 3) uint8 (the decoding of z),
    the region's top-left pixel at (y0, x0) of the level (multiples of the stride) -> (h*f, w*f, 3) uint8.
    `rows` patch rows are scored at a time (memory only)."""
    f, p, s = bank.factor, spec.patch, spec.stride
    h, w = z.shape[1] * f, z.shape[2] * f
    n_y, n_x = (h - p) // s + 1, (w - p) // s + 1
    gy, gx = torch.arange(n_y) * s, torch.arange(n_x) * s  # patch corners in region pixels
    cy, cx = (gy + p // 2) // f, (gx + p // 2) // f  # the latent cell under each patch's centre
    seeds = bank.cells[_nearest_cells(bank, z, spec.candidates)[cy[:, None], cx[None, :]]]  # (n_y, n_x, k, 3)
    gather = _Patches(bank, p)
    seed_src = gather.clamp(seeds[..., 0], seeds[..., 1] * f + (gy - cy * f)[:, None, None],  # same offset in the cell
                            seeds[..., 2] * f + (gx - cx * f)[None, :, None])
    target = _grid_patches(torch.from_numpy(guide.astype(np.float32) / 127.5 - 1.0), n_y, n_x, s, p)

    def choose(src: tuple[torch.Tensor, ...], current: torch.Tensor | None, discount: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per patch, the candidate of least guide distance (times guide_weight) plus distance to `current`, times
        `discount` per candidate."""
        picks = []
        for r in range(0, n_y, rows):
            o, y, x = (t[r : r + rows] for t in src)
            cand = gather(o, y, x)  # (rows, n_x, k, p*p, 6)
            c = spec.guide_weight * ((cand[..., 3:] - target[r : r + rows, :, None]) ** 2).mean((-1, -2))
            if current is not None:
                c = c + ((cand[..., :3] - current[r : r + rows, :, None]) ** 2).mean((-1, -2))
            picks.append((c if discount is None else c * discount).argmin(-1, keepdim=True))
        i = torch.cat(picks)
        return tuple(t.gather(-1, i)[..., 0] for t in src)

    cur = choose(seed_src, None)
    ky = (y0 // s + torch.arange(n_y))[:, None, None]  # global grid positions: the jitter's keys
    kx = (x0 // s + torch.arange(n_x))[None, :, None]
    j = torch.arange(4)
    still = torch.zeros(n_y, n_x, 1, dtype=torch.long)
    k = seed_src[0].shape[-1]  # candidates per pass, in `parts` order: k seeds, 4 neighbours' sources, 4 jitters, itself
    discount = torch.cat([torch.ones(k), torch.full((4,), 1.0 / (1.0 + spec.coherence)), torch.ones(5)])
    for it in range(spec.iters):
        current = _grid_patches(_paste(gather(*cur)[..., :3], s, h, w), n_y, n_x, s, p)
        parts = [seed_src]
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # a neighbour's source, moved by the offset to it
            o_n, y_n, x_n = (_shifted(t, dy, dx)[..., None] for t in cur)
            parts.append((o_n, y_n + dy * s, x_n + dx * s))
        jy = _hash(seed, level, it, ky, kx, j) % (2 * spec.jitter + 1) - spec.jitter
        jx = _hash(seed, level, it, ky, kx, j + 4) % (2 * spec.jitter + 1) - spec.jitter
        parts.append((cur[0][..., None].expand(-1, -1, 5), cur[1][..., None] + torch.cat([jy, still], -1),
                      cur[2][..., None] + torch.cat([jx, still], -1)))
        cur = choose(gather.clamp(*(torch.cat([q[i] for q in parts], -1) for i in range(3))), current, discount)
    out = _paste(gather(*cur)[..., :3], s, h, w)
    return ((out.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """t[i - dy, j - dx] at (i, j): the neighbour's value, the region's own edge repeated outside it."""
    t = F.pad(t[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    n_y, n_x = t.shape[0] - 2, t.shape[1] - 2
    return t[1 - dy : 1 - dy + n_y, 1 - dx : 1 - dx + n_x]
