"""Exemplar synthesis: a pixel level read off the latent of its own magnification by quilting patches of real pixels.

A 5x latent cell (8 x 8 px at f8) holds the tissue's layout but not where its nuclei are, and a network's reading
of it draws them smeared or as hatching (model card, 2026-12-04). This module draws them from an exemplar instead:
the real pixels of the training region at that magnification, in its 8 orientations. It is image quilting for
texture transfer (Efros and Freeman 2001), in a form whose every step is local:

- the output is covered by patches of `patch` px whose corners lie on a grid of stride patch - overlap in the
  level's global pixel grid, so neighbouring patches share an `overlap` px strip;
- each patch starts from an exemplar patch whose *guide* (the autoencoder's decoding of the exemplar's own latent)
  is within `tolerance` of the best match to the output's guide (the decoding of the sampled latent), among the
  `candidates` exemplar cells whose latent neighbourhoods are nearest the output cell's; which one is a hash of
  (seed, level, grid position). Guides are compared as means over `guide_pool` px: their colour and layout, not the
  soft texture a decoder draws, which would favour the smoothest exemplar patches (the epidermis);
- optionally (`iters`, default 0), red-black passes then let half the patches at a time choose among those, the
  current one and their four neighbours' sources continued, by guide distance (weight `guide_weight`) plus the
  mismatch with their neighbours' patches on the shared strips. That grows coherent copies, but on whole slides it
  spread the epidermis over purple dermis and measured worse (model card, 2026-12-07 twenty-fourth), so by default
  each patch keeps its first pick and the seams alone join them;
- the output is pasted in raster order of the global grid, each patch cut along the minimum-error seams (a dynamic
  programme over each shared strip) to its left and upper neighbours: every pixel is copied, never blended, so
  nuclei stay crisp, and the seams follow where two patches already agree.

Every choice depends only on the latent, the guide and positions within a bounded radius (`ExemplarSpec.halo`),
and the randomness is a hash of global positions: a tile synthesised with that much context equals the untiled
level, whatever the tile layout or order. The sequential original (each patch matched to the pixels already laid)
cannot be tiled that way.
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
    # 96 um at 5x; 32 px (overlap 8) measured worse: a finer collage, smaller nuclei (model card, 2026-12-07 twenty-sixth)
    patch: int = 48
    overlap: int = 12
    iters: int = 0  # red-black passes; measured worse on whole slides (they spread the epidermis), kept as an option
    candidates: int = 32
    guide_weight: float = 1.0  # the guide distance's weight against the neighbours' mismatch (weight 1)
    tolerance: float = 0.1  # the first choice is any candidate within this fraction of the best guide distance
    guide_pool: int = 8  # guides are compared as means over pool x pool px (their colour, not their texture)

    @property
    def stride(self) -> int:
        return self.patch - self.overlap

    def halo(self, factor: int) -> int:
        """Pixels of context that make a tile equal the untiled level: the grid's first patch may start a stride
        before the region, each pass reaches one stride further, the paste one more, plus the patch and a latent
        cell's neighbourhood; rounded up to whole latent cells."""
        px = (self.iters + 3) * self.stride + self.patch + 2 * factor
        return -(-px // factor) * factor


def validate_spec(spec: ExemplarSpec, factor: int) -> None:
    if spec.overlap < 1 or spec.patch < 2 * spec.overlap:
        raise ValueError("exemplar overlap must be >= 1 and at most half the patch")
    if min(spec.iters, spec.guide_weight, spec.tolerance) < 0 or spec.candidates < 1:
        raise ValueError("exemplar iters, guide_weight and tolerance must be >= 0 and candidates >= 1")
    if spec.guide_pool < 1 or spec.patch % spec.guide_pool:
        raise ValueError("exemplar guide_pool must be >= 1 and divide the patch")
    if min(spec.height, spec.width) < max(4 * factor, spec.patch):
        raise ValueError(f"the exemplar must be at least {max(4 * factor, spec.patch)} px on each side")


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

    def patches(self, src: tuple[torch.Tensor, ...], r: slice = slice(None)) -> torch.Tensor:
        """(rows, ...) sources, rows r of them -> (rows, ..., p, p, 6)."""
        o, y, x = (t[r] for t in src)
        return self(o, y, x).reshape(*o.shape, self.p, self.p, 6)


def _nearest_cells(bank: ExemplarBank, z: np.ndarray, k: int, chunk: int = 2048) -> torch.Tensor:
    """(h, w, k) bank rows of the k exemplar cells whose latent neighbourhoods are nearest each cell of z's."""
    q = torch.from_numpy(cell_features(z))
    k = min(k, bank.features.shape[0])
    # squared distance less the query's own norm, which is the same along a row and cannot change its order
    out = [((-2 * part) @ bank.features.T + bank.sq_norms[None]).topk(k, dim=1, largest=False).indices
           for part in q.split(chunk)]
    return torch.cat(out).reshape(z.shape[1], z.shape[2], k)


def _unit(h: torch.Tensor) -> torch.Tensor:
    """A hash -> a float in [0, 1)."""
    return (h >> 38).double() / float(1 << 24)


def _seams(err: torch.Tensor) -> torch.Tensor:
    """(..., L, W) error of a shared strip -> (..., L): the column of the minimum-error path from its first row to
    its last that moves at most one column a row (Efros and Freeman's minimum error boundary cut)."""
    cost, w = err.clone(), err.shape[-1]
    back = torch.zeros(err.shape, dtype=torch.long)
    inf = torch.full(err.shape[:-2] + (1,), float("inf"))
    for y in range(1, err.shape[-2]):
        prev = cost[..., y - 1, :]
        m, a = torch.stack([torch.cat([inf, prev[..., :-1]], -1), prev, torch.cat([prev[..., 1:], inf], -1)], -1).min(-1)
        cost[..., y, :] += m
        back[..., y, :] = a - 1
    path = torch.empty(err.shape[:-1], dtype=torch.long)
    x = cost[..., -1, :].argmin(-1)
    for y in range(err.shape[-2] - 1, -1, -1):
        path[..., y] = x
        x = (x + back[..., y, :].gather(-1, x[..., None])[..., 0]).clamp(0, w - 1)
    return path


def _paste(patches: torch.Tensor, s: int, o: int) -> torch.Tensor:
    """(n_y, n_x, p, p, 3) patches on a grid of stride s -> ((n_y-1)*s + p, (n_x-1)*s + p, 3): pasted in raster
    order, each cut along the minimum-error seams on the strips it shares with its left and upper neighbours (the
    seams depend only on the two patches, so the result is local)."""
    n_y, n_x, p = patches.shape[:3]
    left = _seams(((patches[:, :-1, :, s:] - patches[:, 1:, :, :o]) ** 2).sum(-1))  # (n_y, n_x-1, p): column per row
    up = _seams(((patches[:-1, :, s:] - patches[1:, :, :o]) ** 2).sum(-1).transpose(-1, -2))  # (n_y-1, n_x, p)
    cols, rows = torch.arange(o), torch.arange(o)
    out = torch.zeros((n_y - 1) * s + p, (n_x - 1) * s + p, 3)
    for i in range(n_y):
        for j in range(n_x):
            mine = torch.ones(p, p, dtype=torch.bool)
            if j:
                mine[:, :o] &= cols[None, :] >= left[i, j - 1][:, None]
            if i:
                mine[:o, :] &= rows[:, None] >= up[i - 1, j][None, :]
            view = out[i * s : i * s + p, j * s : j * s + p]
            view[mine] = patches[i, j][mine]
    return out


def synthesize(bank: ExemplarBank, z: np.ndarray, guide: np.ndarray, spec: ExemplarSpec, seed: int, level: int,
               y0: int = 0, x0: int = 0, rows: int = 4) -> np.ndarray:
    """Pixels of a region from its scaled latent z (C, h, w) and guide (h*f, w*f, 3) uint8 (the decoding of z),
    the region's top-left pixel at (y0, x0) of the level (multiples of the latent cell) -> (h*f, w*f, 3) uint8.
    `rows` patch rows are scored at a time (memory only)."""
    f, p, s, o = bank.factor, spec.patch, spec.stride, spec.overlap
    h, w = z.shape[1] * f, z.shape[2] * f
    # the global grid's patches that touch the region; the guide is padded (edge repeated) under those that overhang
    ay, ax = y0 // s * s - y0, x0 // s * s - x0  # first corner, in region pixels (<= 0)
    n_y, n_x = -(-(h - ay - o) // s), -(-(w - ax - o) // s)
    pad_y, pad_x = (n_y - 1) * s + p + ay - h, (n_x - 1) * s + p + ax - w
    target = torch.from_numpy(np.pad(guide.astype(np.float32) / 127.5 - 1.0, ((-ay, pad_y), (-ax, pad_x), (0, 0)), mode="edge"))
    gy, gx = ay + torch.arange(n_y) * s, ax + torch.arange(n_x) * s  # corners in region pixels
    cy, cx = ((gy + p // 2) // f).clamp(0, z.shape[1] - 1), ((gx + p // 2) // f).clamp(0, z.shape[2] - 1)
    seeds = bank.cells[_nearest_cells(bank, z, spec.candidates)[cy[:, None], cx[None, :]]]  # (n_y, n_x, k, 3)
    gather = _Patches(bank, p)
    seed_src = gather.clamp(seeds[..., 0], seeds[..., 1] * f + (gy - cy * f)[:, None, None],  # same offset in the cell
                            seeds[..., 2] * f + (gx - cx * f)[None, :, None])
    tgt = pooled(target.unfold(0, p, s).unfold(1, p, s).permute(0, 1, 3, 4, 2), spec.guide_pool)  # (n_y, n_x, p/q, p/q, 3)
    ky = (y0 + gy) // s  # global grid positions: the hash's keys
    kx = (x0 + gx) // s

    def guide_cost(cand: torch.Tensor, r: slice) -> torch.Tensor:
        """(rows, n_x, k, p, p, 6) candidates of patch rows r -> (rows, n_x, k) mean squared guide distance."""
        return ((pooled(cand[..., 3:], spec.guide_pool) - tgt[r, :, None]) ** 2).mean((-1, -2, -3))

    # the first choice: a hashed pick among the candidates within `tolerance` of the best guide distance
    cost = torch.cat([guide_cost(gather.patches(seed_src, slice(r, r + rows)), slice(r, r + rows)) for r in range(0, n_y, rows)])
    ok = cost <= cost.min(-1, keepdim=True).values * (1 + spec.tolerance)
    draw = _unit(_hash(seed, level, ky[:, None, None], kx[None, :, None], torch.arange(cost.shape[-1])))
    pick = torch.where(ok, draw, 2.0).argmin(-1, keepdim=True)
    cur = tuple(t.gather(-1, pick)[..., 0] for t in seed_src)
    red = ((ky[:, None] + kx[None, :]) % 2 == 0)
    for it in range(spec.iters):
        cur = _improve(gather, cur, seed_src, guide_cost, spec, n_y, n_x, rows, red if it % 2 == 0 else ~red)
    out = _paste(gather.patches(cur)[..., :3], s, o)[-ay : -ay + h, -ax : -ax + w]
    return ((out.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def pooled(x: torch.Tensor, q: int) -> torch.Tensor:
    """(..., p, p, 3) -> (..., p/q, p/q, 3): means over q x q px."""
    if q == 1:
        return x
    *lead, p, _, c = x.shape
    return x.reshape(*lead, p // q, q, p // q, q, c).mean((-2, -4))


def _improve(gather: _Patches, cur: tuple[torch.Tensor, ...], seed_src: tuple[torch.Tensor, ...],
             guide_cost: Callable[[torch.Tensor, slice], torch.Tensor], spec: ExemplarSpec,
             n_y: int, n_x: int, rows: int, move: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One red-black pass: the patches where `move` is set choose, among their candidates, their current source and
    their four neighbours' sources continued by the stride, the one of least guide distance (times guide_weight)
    plus mean squared mismatch with the neighbours' current patches on the strips they share."""
    p, s, o = spec.patch, spec.stride, spec.overlap
    now = gather.patches(cur)[..., :3]
    parts = [seed_src, tuple(t[..., None] for t in cur)]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # a neighbour's source, moved by the offset to it
        o_n, y_n, x_n = (_shifted(t, dy, dx)[..., None] for t in cur)
        parts.append((o_n, y_n + dy * s, x_n + dx * s))
    src = gather.clamp(*(torch.cat([q[i] for q in parts], -1) for i in range(3)))
    # each neighbour's strip that the patch shares, and where in the patch it falls (missing neighbours: weight 0);
    # a neighbour's source continued matches it there exactly, which is what lets coherent copies grow
    strips = (((-1, 0), (slice(s, p), slice(None)), (slice(0, o), slice(None))),
              ((1, 0), (slice(0, o), slice(None)), (slice(s, p), slice(None))),
              ((0, -1), (slice(None), slice(s, p)), (slice(None), slice(0, o))),
              ((0, 1), (slice(None), slice(0, o)), (slice(None), slice(s, p))))
    theirs = [(_neighbour(now[:, :, a, b], dy, dx), (c, d)) for (dy, dx), (a, b), (c, d) in strips]
    picks = []
    for r in range(0, n_y, rows):
        rs = slice(r, min(r + rows, n_y))
        cand = gather.patches(src, rs)
        cost = spec.guide_weight * guide_cost(cand, rs)
        for (nb, has), (a, b) in theirs:
            cost = cost + ((cand[..., a, b, :3] - nb[rs, :, None]) ** 2).mean((-1, -2, -3)) * has[rs, :, None]
        picks.append(cost.argmin(-1, keepdim=True))
    best = tuple(t.gather(-1, torch.cat(picks))[..., 0] for t in src)
    return tuple(torch.where(move, b, c) for b, c in zip(best, cur))


def _neighbour(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_y, n_x, ...) -> (t[i + dy, j + dx] at (i, j), zero outside; (n_y, n_x) 1.0 where that neighbour exists)."""
    n_y, n_x = t.shape[:2]
    out, has = torch.zeros_like(t), torch.zeros(n_y, n_x)
    ys, yd = slice(max(dy, 0), n_y + min(dy, 0)), slice(max(-dy, 0), n_y + min(-dy, 0))
    xs, xd = slice(max(dx, 0), n_x + min(dx, 0)), slice(max(-dx, 0), n_x + min(-dx, 0))
    out[yd, xd], has[yd, xd] = t[ys, xs], 1.0
    return out, has


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """t[i - dy, j - dx] at (i, j): the neighbour's value, the region's own edge repeated outside it."""
    t = F.pad(t[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    n_y, n_x = t.shape[0] - 2, t.shape[1] - 2
    return t[1 - dy : 1 - dy + n_y, 1 - dx : 1 - dx + n_x]
