"""Deep Zoom geometry and the byte-bounded cache: pure functions, no web server."""

from __future__ import annotations

import math
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from gigagen.io.omezarr import level_shapes_for
from viewer.cache import ByteLRU
from gigagen.io.deepzoom import DeepZoomGeometry


def geometry(width: int, height: int, tile: int = 256, overlap: int = 0) -> DeepZoomGeometry:
    return DeepZoomGeometry(level_shapes_for(width, height), tile, overlap)


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (1000, 700), (4096, 4096), (4097, 3), (300, 5000)])
def test_levels_run_from_one_pixel_to_full_size(size):
    g = geometry(*size)
    assert g.max_level == math.ceil(math.log2(max(size))) if max(size) > 1 else g.max_level == 0
    assert g.dz_dims[0] == (1, 1)
    assert g.dz_dims[-1] == size
    for (w, h), (w2, h2) in zip(g.dz_dims, g.dz_dims[1:], strict=False):
        assert (w, h) == ((w2 + 1) // 2, (h2 + 1) // 2)


@pytest.mark.parametrize("overlap", [0, 1, 3])
def test_tiles_cover_each_level_exactly(overlap):
    g = geometry(1000, 700, tile=254, overlap=overlap)
    for level in range(g.level_count):
        width, height = g.dz_dims[level]
        cols, rows = g.dz_tiles[level]
        covered = set()
        for col in range(cols):
            x0, y0, x1, y1 = g.dz_tile_bounds(level, col, 0)
            assert x1 - x0 <= 254 + 2 * overlap and x1 <= width
            covered.update(range(x0, x1))
        assert covered == set(range(width))
        x0, y0, x1, y1 = g.dz_tile_bounds(level, cols - 1, rows - 1)
        assert (x1, y1) == (width, height)  # edge tiles end exactly at the level's edge


def test_edge_tile_bounds_with_overlap():
    g = geometry(1000, 700, tile=254, overlap=1)
    top = g.max_level
    assert g.dz_tile_bounds(top, 0, 0) == (0, 0, 255, 255)
    assert g.dz_tile_bounds(top, 1, 1) == (253, 253, 509, 509)
    assert g.dz_tiles[top] == (4, 3)
    assert g.dz_tile_bounds(top, 3, 2) == (761, 507, 1000, 700)


def test_full_resolution_levels_map_one_to_one_onto_stored_levels():
    g = geometry(1000, 700)
    assert len(g.src_shapes) == 3  # 1000x700, 500x350, 250x175
    r = g.tile_region(g.max_level, 3, 2)
    assert (r.src_level, r.src_x, r.src_y, r.src_w, r.src_h) == (0, 768, 512, 232, 188)
    assert not r.needs_resize
    r = g.tile_region(g.max_level - 1, 1, 1)
    assert (r.src_level, r.src_x, r.src_y, r.out_w, r.out_h) == (1, 256, 256, 244, 94)


def test_levels_below_the_stored_pyramid_resample_the_coarsest_level():
    g = geometry(1000, 700)
    r = g.tile_region(g.max_level - 4, 0, 0)  # 16x smaller than level 0: 63x44
    assert r.src_level == 2 and r.needs_resize
    assert (r.src_w, r.src_h) == (250, 175) and (r.out_w, r.out_h) == (63, 44)
    r = g.tile_region(0, 0, 0)
    assert (r.out_w, r.out_h) == (1, 1) and (r.src_w, r.src_h) == (250, 175)


@pytest.mark.parametrize("address", [(-1, 0, 0), (11, 0, 0), (10, 4, 0), (10, 0, 3), (10, -1, 0), (0, 1, 0)])
def test_bad_tile_addresses_raise_value_error(address):
    with pytest.raises(ValueError):
        geometry(1000, 700).tile_region(*address)


def test_store_whose_levels_are_not_halvings_is_rejected():
    with pytest.raises(ValueError):
        DeepZoomGeometry([(700, 1000), (300, 500)])
    with pytest.raises(ValueError):
        DeepZoomGeometry([(700, 1000)], tile_size=8, overlap=8)


def test_dzi_descriptor():
    root = ET.fromstring(geometry(1000, 700, 254, 1).dzi_xml("jpeg"))
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    assert root.tag == f"{ns}Image"
    assert (root.get("Format"), root.get("TileSize"), root.get("Overlap")) == ("jpeg", "254", "1")
    size = root.find(f"{ns}Size")
    assert (size.get("Width"), size.get("Height")) == ("1000", "700")
    with pytest.raises(ValueError):
        geometry(10, 10).dzi_xml("webp")


def test_lru_evicts_least_recently_used_within_byte_budget():
    cache: ByteLRU[bytes] = ByteLRU(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")
    assert cache.get("b") is None and cache.get("a") is not None and cache.nbytes == 8
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None


def test_lru_computes_a_missing_entry_once_for_concurrent_callers():
    cache: ByteLRU[bytes] = ByteLRU(1000, len)
    calls = []

    def compute() -> bytes:
        calls.append(1)
        time.sleep(0.05)
        return b"tile"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", compute)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"tile"] * 8 and len(calls) == 1


def test_lru_with_zero_budget_computes_every_time():
    cache: ByteLRU[bytes] = ByteLRU(0, len)
    assert cache.get_or_compute("k", lambda: b"x") == b"x"
    assert cache.get("k") is None
