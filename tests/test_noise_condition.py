"""Noise as a function of position, and conditioning upsampling that matches whole-canvas interpolation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gigagen.engine.condition import cond_for_region
from gigagen.engine.noise import gaussian_region


def test_noise_regions_agree_with_the_whole() -> None:
    whole = gaussian_region(5, 1, 3, 0, 150, 0, 200, 4)
    assert whole.shape == (4, 150, 200) and abs(float(whole.std()) - 1) < 0.02
    for y0, y1, x0, x1 in [(0, 10, 0, 10), (60, 130, 63, 129), (149, 150, 0, 200), (7, 71, 190, 200)]:
        np.testing.assert_array_equal(gaussian_region(5, 1, 3, y0, y1, x0, x1, 4), whole[:, y0:y1, x0:x1])


def test_noise_keys_differ() -> None:
    a = gaussian_region(5, 1, 3, 0, 64, 0, 64, 4)
    for key in [(6, 1, 3), (5, 2, 3), (5, 1, 4)]:
        assert not np.allclose(a, gaussian_region(*key, 0, 64, 0, 64, 4))


def test_cond_for_region_equals_full_bilinear_upsampling() -> None:
    parent = np.random.default_rng(0).standard_normal((3, 11, 13)).astype(np.float32)
    full = F.interpolate(torch.from_numpy(parent)[None], scale_factor=4, mode="bilinear", align_corners=False)[0].numpy()
    for y0, y1, x0, x1 in [(0, 44, 0, 52), (0, 8, 0, 8), (12, 40, 20, 52), (40, 44, 48, 52)]:
        np.testing.assert_allclose(cond_for_region(parent, y0, y1, x0, x1, 4), full[:, y0:y1, x0:x1], atol=1e-5)
