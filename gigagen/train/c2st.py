"""A classifier two-sample test: how well a small network, trained here, tells generated 20x crops from real ones.

The random-feature FD (metrics.random_conv_features) compares statistics of an untrained network's features; it
cannot see what it was not built to see. A classifier two-sample test (Lopez-Paz and Oquab 2017) asks instead whether
*any* small network can learn to tell the two sets apart: trained on one half of each set and scored on the other,
its accuracy is 0.5 when the sets are alike and 1.0 when every crop gives itself away. It is the closest measure this
project can compute offline to "would an observer take these tiles for real ones".

The halves are disjoint in space (each set is split by where its crops come from: `band_halves` for the real band,
scripts/c2st.py per slide), so the network cannot score well by remembering overlapping crops. Accuracy is the mean
over both directions (train on A, score on B, and back) and over `runs` seeds. The network sees colour as it is: stain differences are real differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gigagen.engine.grid import dihedral
from gigagen.train import data as D


@dataclass(frozen=True)
class C2STConfig:
    crop: int = 64  # px at 0.5 um/px: 32 um, a few nuclei
    steps: int = 300
    batch: int = 64
    lr: float = 2e-3
    width: int = 16
    runs: int = 3
    max_crops: int = 600  # per class and half: the larger set is subsampled to the smaller's size, at most this


def crops(rgb: np.ndarray, size: int, stride: int, min_tissue: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Tissue crops of one image on a stride grid -> ((N, size, size, 3) uint8, (N,) x of each crop's centre)."""
    mask = D.tissue_mask(rgb)
    out, xs = [], []
    for y in range(0, rgb.shape[0] - size + 1, stride):
        for x in range(0, rgb.shape[1] - size + 1, stride):
            if mask[y : y + size, x : x + size].mean() >= min_tissue:
                out.append(rgb[y : y + size, x : x + size])
                xs.append(x + size / 2)
    if not out:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0)
    return np.stack(out), np.array(xs)


def band_halves(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real band -> crops (stride size/2) of its left half and of its right half, a crop apart so none overlap."""
    c, x = crops(rgb, size, size // 2)
    mid = rgb.shape[1] / 2
    return c[x + size / 2 <= mid], c[x - size / 2 >= mid + size]


def _net(width: int) -> nn.Module:
    """Four stride-2 convolutions, pooled: a small receptive field (nuclei, fibres), few parameters (little data)."""
    layers: list[nn.Module] = []
    chans = [3, width, 2 * width, 4 * width, 4 * width]
    for a, b in zip(chans, chans[1:]):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 1))


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _balanced(a: np.ndarray, b: np.ndarray, cap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b), cap)
    return a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]


def accuracy_once(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], cfg: C2STConfig, seed: int) -> float:
    """Train on (real, generated) crops, return the balanced accuracy on the test pair. The eight dihedral
    orientations augment training, since orientation carries nothing either way."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    (ra, ga), (rb, gb) = _balanced(*train, cfg.max_crops, rng), _balanced(*test, cfg.max_crops, rng)
    if min(len(ra), len(rb)) < 8:
        raise ValueError(f"too few crops for a two-sample test ({len(ra)} and {len(rb)} per class)")
    x = np.concatenate([ra, ga])
    y = torch.cat([torch.zeros(len(ra)), torch.ones(len(ga))])
    net = _net(cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(cfg.steps):
        idx = rng.integers(0, len(x), cfg.batch)
        batch = np.stack([dihedral(x[i], int(rng.integers(8))) for i in idx])
        loss = loss_fn(net(_tensor(batch))[:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        score = lambda c: torch.cat([net(_tensor(c[i : i + 256]))[:, 0] for i in range(0, len(c), 256)])  # noqa: E731
        acc_real = (score(rb) < 0).float().mean().item()
        acc_gen = (score(gb) > 0).float().mean().item()
    return 0.5 * (acc_real + acc_gen)


def two_sample_accuracy(real: tuple[np.ndarray, np.ndarray], generated: tuple[np.ndarray, np.ndarray],
                        cfg: C2STConfig = C2STConfig(), seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the held-out accuracy over both directions and cfg.runs seeds; each argument is the two
    disjoint halves of one set."""
    accs = [accuracy_once((real[a], generated[a]), (real[1 - a], generated[1 - a]), cfg, seed + 2 * r + a)
            for r in range(cfg.runs) for a in (0, 1)]
    return float(np.mean(accs)), float(np.std(accs))
