"""Tile geometry: exact segments, exactly-once coverage per grid-shift step, edges without wrap-around."""

from __future__ import annotations

import numpy as np
import pytest

from gigagen.engine.grid import Tile, batches, coverage, shifted_segments, step_offset, step_tiles, window_segments


def test_shifted_segments_exact() -> None:
    assert shifted_segments(100, 32, 0) == [(0, 32), (32, 64), (64, 100)]  # 4-wide tail merged
    assert shifted_segments(96, 32, 0) == [(0, 32), (32, 64), (64, 96)]
    assert shifted_segments(100, 32, 20) == [(0, 20), (20, 52), (52, 84), (84, 100)]
    assert shifted_segments(100, 32, 8) == [(0, 40), (40, 72), (72, 100)]  # 8-wide head merged
    assert shifted_segments(20, 32, 16) == [(0, 20)]  # canvas smaller than a tile: one tile


@pytest.mark.parametrize("length", [4, 8, 16, 28, 32, 36, 64, 100, 132, 260])
def test_every_offset_covers_each_pixel_once(length: int) -> None:
    tile, divisor = 32, 4
    for offset in range(0, tile, divisor):
        segs = shifted_segments(length, tile, offset)
        cover = np.zeros(length, dtype=int)
        for a, b in segs:
            cover[a:b] += 1
            assert a % divisor == 0 and b % divisor == 0
            if length > tile:
                assert tile // 2 <= b - a < tile + tile // 2
        assert (cover == 1).all(), (length, offset, segs)
        assert segs[0][0] == 0 and segs[-1][1] == length  # no wrap-around: edges stay edges


def test_gridshift_step_tiles_cover_canvas_exactly_once_and_move() -> None:
    shape, tile = (100, 140), 32
    starts = set()
    for step in range(12):
        tiles = step_tiles(shape, tile, "gridshift", seed=7, level=0, step=step, divisor=4)
        assert (coverage(shape, tiles) == 1).all()
        starts.add(tuple(sorted({t.y0 for t in tiles})))
    assert len(starts) > 3  # the borders move between steps


def test_offsets_are_seeded_and_divisor_aligned() -> None:
    offs = [step_offset(3, 1, s, 32, 4) for s in range(50)]
    assert offs == [step_offset(3, 1, s, 32, 4) for s in range(50)]
    assert all(o % 4 == 0 and 0 <= o < 32 for pair in offs for o in pair)
    assert len(set(offs)) > 10
    assert offs != [step_offset(4, 1, s, 32, 4) for s in range(50)]


def test_fixed_grid_never_moves() -> None:
    a = step_tiles((64, 64), 32, "none", seed=1, level=0, step=0, divisor=4)
    b = step_tiles((64, 64), 32, "none", seed=9, level=0, step=5, divisor=4)
    assert a == b == [Tile(0, 32, 0, 32), Tile(0, 32, 32, 64), Tile(32, 64, 0, 32), Tile(32, 64, 32, 64)]


def test_overlap_windows() -> None:
    assert window_segments(64, 32, 16) == [(0, 32), (16, 48), (32, 64)]
    assert window_segments(70, 32, 16) == [(0, 32), (16, 48), (32, 64), (38, 70)]
    tiles = step_tiles((64, 64), 32, "overlap", seed=0, level=0, step=0, divisor=4)
    cov = coverage((64, 64), tiles)
    assert cov.min() == 1 and cov.max() == 4 and len(tiles) == 9


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        step_tiles((8, 8), 8, "spiral", seed=0, level=0, step=0, divisor=4)


def test_batches_group_one_shape() -> None:
    tiles = step_tiles((100, 140), 32, "gridshift", seed=1, level=0, step=3, divisor=4)
    seen = []
    for b in batches(tiles, 3):
        assert 1 <= len(b) <= 3 and len({t.shape for t in b}) == 1
        seen += b
    assert sorted(seen) == sorted(tiles)
