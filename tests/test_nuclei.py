"""Nucleus stamps (gigagen.engine.nuclei): real centres found, sampled centres a pure function of (seed, level,
position) with a hard core, their density fitted to the real count, and a slide's tiles equal to the untiled level."""

from __future__ import annotations

import numpy as np

from gigagen.engine import nuclei as N
from gigagen.engine.decode import stamped_region, to_uint8
from gigagen.engine.grid import Tile
from gigagen.train.metrics import nucleus_centres

PINK, PURPLE, WHITE = (230, 150, 190), (90, 55, 110), (245, 245, 245)


def tissue(h: int = 200, w: int = 300, seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A pink field with a purple band (left third) and white background (right fifth), and dark discs of
    radius 4 px (12.6 um2 at 0.5 um/px) at `n` random centres in the band: (image, centres)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = PINK
    img[:, : w // 3] = (170, 110, 170)
    img[:, w - w // 5 :] = WHITE
    yy, xx = np.mgrid[:h, :w]
    centres = []
    while len(centres) < n:
        c = rng.uniform((6, 6), (h - 6, w // 3 - 6))
        if all(np.hypot(*(c - d)) > 11 for d in centres):
            centres.append(c)
            img[(yy + 0.5 - c[0]) ** 2 + (xx + 0.5 - c[1]) ** 2 <= 16] = PURPLE
    return img, np.array(centres)


def spec(**kw: float) -> N.StampSpec:
    base = dict(colour=(90.0, 55.0, 110.0), radius=1.0, spacing=3.0, window=8, weights=(0.02, 0.0, 0.0, 0.0), scale=1.0)
    return N.StampSpec(**(base | kw))  # type: ignore[arg-type]


def test_nucleus_centres_finds_each_disc_at_its_centre() -> None:
    img, centres = tissue()
    found = nucleus_centres(img, 0.5)
    assert len(found) == len(centres)
    d = np.hypot(*(found[:, None, :] - centres[None, :, :] + 0.5).transpose(2, 0, 1)).min(axis=1)
    assert d.max() < 0.75, d.max()  # pixel centres vs continuous centres
    assert len(nucleus_centres(np.full((64, 64, 3), 245, np.uint8), 0.5)) == 0


def test_stamp_paints_a_disc_of_the_colour_and_leaves_the_rest() -> None:
    img = np.full((20, 20, 3), 200, np.uint8)
    out = N.stamp(img, np.array([[10.0, 10.0]]), spec(radius=2.0))
    np.testing.assert_array_equal(out[10, 10], (90, 55, 110))
    np.testing.assert_array_equal(out[9, 9], (90, 55, 110))
    assert (out[:4] == 200).all() and (out[:, 15:] == 200).all()


def test_sampled_centres_keep_their_distance_and_depend_only_on_seed_level_and_position() -> None:
    lam = np.full((120, 140), 0.2, np.float32)
    s = spec(spacing=4.0)
    a = N.sample_centres(lam, s, 7, 1, 0, 0)
    assert len(a) > 50
    d = np.hypot(*(a[:, None] - a[None]).transpose(2, 0, 1)) + np.eye(len(a)) * 99
    assert d.min() >= 4.0 - np.sqrt(2), d.min()  # the hard core acts on pixels; offsets move a centre within its pixel
    b = N.sample_centres(lam[40:, 30:], s, 7, 1, 40, 30)  # the same level read from (40, 30)
    inner = lambda c, o: {tuple(np.round(p + o, 6)) for p in c if (p + o >= 40 + 6).all() and (p + o < (120 - 6, 140 - 6)).all()}  # noqa: E731
    assert inner(a, 0) == inner(b, np.array([40, 30])) and inner(a, 0)
    assert {tuple(p) for p in N.sample_centres(lam, s, 8, 1, 0, 0)} != {tuple(p) for p in a}  # another seed
    assert {tuple(p) for p in N.sample_centres(lam, s, 7, 2, 0, 0)} != {tuple(p) for p in a}  # another level
    assert len(N.sample_centres(np.zeros_like(lam), s, 7, 1, 0, 0)) == 0


def test_fit_spec_matches_the_real_count_where_the_nuclei_are() -> None:
    img, centres = tissue(n=30)  # a Matern II process of hard core s holds at most 1 / (pi s^2) centres per px
    fitted = N.fit_spec([img], [centres], mpp=0.5, window=16)
    got = N.sample_centres(N.intensity(img, fitted), fitted, 0, 0, 0, 0)
    assert abs(len(got) - 30) <= 2, len(got)
    w = img.shape[1]
    assert (got[:, 1] < w // 3 + 8).mean() > 0.9  # in the purple band, where the real ones are
    assert not (got[:, 1] >= w - w // 5).any()  # never on the background
    assert N.StampSpec.from_dict(fitted.to_dict()) == fitted


def test_a_slide_tile_with_its_halo_equals_the_untiled_stamped_level() -> None:
    """engine.decode.stamped_region on tiles (identity decoder, factor 1) stitches to the whole level's stamps."""
    img, _ = tissue(seed=3)
    latent = img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    s = spec(weights=(0.3, 0.0, 0.0, 0.02), scale=1.0)  # dense: hard-core conflicts across every tile edge
    identity = lambda z: z  # noqa: E731
    whole = N.sampled_stamps(to_uint8(latent).transpose(1, 2, 0), s, 5, 1)
    assert (whole != img).any(axis=2).sum() > 100  # stamps were painted
    h, w = img.shape[:2]
    tiled = np.zeros_like(whole)
    for y0 in range(0, h, 48):
        for x0 in range(0, w, 56):
            t = Tile(y0, min(y0 + 48, h), x0, min(x0 + 56, w))
            tiled[t.y0 : t.y1, t.x0 : t.x1] = stamped_region(latent, identity, 1, t, 0, s, 5, 1).transpose(1, 2, 0)
    np.testing.assert_array_equal(tiled, whole)
