"""The classifier two-sample test tells different tile sets apart and not alike ones, on halves that never overlap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from gigagen.train.c2st import C2STConfig, band_halves, crops, two_sample_accuracy

ROOT = Path(__file__).resolve().parents[1]
CFG = C2STConfig(crop=32, steps=120, batch=32, runs=1, max_crops=200)


def tissue(seed: int, h: int = 192, w: int = 768, blur: float = 0.0) -> np.ndarray:
    """Pink stroma with dark purple nuclei (discs of radius 2-4 px) at random places; optionally blurred."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (225, 130, 180)
    img += rng.normal(0, 6, img.shape)
    yy, xx = np.mgrid[:h, :w]
    for y, x, r in zip(rng.integers(0, h, 700), rng.integers(0, w, 700), rng.uniform(2, 4, 700)):
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = (70, 40, 120)
    if blur:
        img = ndimage.gaussian_filter(img, (blur, blur, 0))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_band_halves_are_disjoint_tissue_crops() -> None:
    img = tissue(0)
    left, right = band_halves(img, 32)
    _, xs = crops(img, 32, 16)
    assert len(left) and len(right) and len(left) + len(right) < len(xs)  # the crops across the middle are dropped
    mid = img.shape[1] // 2
    lx = [x for x in range(0, img.shape[1] - 32 + 1, 16) if x + 32 <= mid]
    rx = [x for x in range(0, img.shape[1] - 32 + 1, 16) if x >= mid + 32]  # a whole crop apart
    assert len(left) == len(lx) * len(range(0, img.shape[0] - 32 + 1, 16))
    assert len(right) == len(rx) * len(range(0, img.shape[0] - 32 + 1, 16))
    blank = np.full((64, 256, 3), 245, np.uint8)  # background only: no tissue crops
    assert len(crops(blank, 32, 16)[0]) == 0


def test_alike_sets_score_near_chance_and_different_ones_near_one() -> None:
    real = band_halves(tissue(1), CFG.crop)
    alike = band_halves(tissue(2), CFG.crop)
    blurred = band_halves(tissue(3, blur=1.5), CFG.crop)
    same, _ = two_sample_accuracy(real, alike, CFG)
    diff, _ = two_sample_accuracy(real, blurred, CFG)
    assert 0.3 < same < 0.7, same
    assert diff > 0.9, diff


def test_the_script_refuses_a_missing_slide_with_one_line() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "c2st.py"), "--slides", "x=/nonexistent/slide"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip() == "c2st: --slides x: no slide at /nonexistent/slide"
