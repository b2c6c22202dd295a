"""gigagen.io.omezarr: the slide store contract (docs/CONTRACTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from gigagen.errors import UserError
from gigagen.io.omezarr import create_slide, downsample2, open_slide, open_writer
from _io_helpers import synthetic_rgb, write_slide


def _reference_pyramid(img: np.ndarray, n: int) -> list[np.ndarray]:
    """Independent 2x2 mean pyramid in float: img (3, H, W) -> list of (3, H_k, W_k)."""
    levels = [img]
    for _ in range(1, n):
        a = levels[-1].astype(np.float64)
        h, w = a.shape[1:]
        a = np.pad(a, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
        m = (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) / 4
        levels.append(np.floor(m + 0.5).astype(np.uint8))
    return levels


def test_layout_and_metadata_follow_contract(tmp_path: Path) -> None:
    zpath = tmp_path / "slide.ome.zarr"
    writer = create_slide(zpath, 1000, 700, 0.5, {"seed": 7, "model": "tiny"})
    assert [a.shape for a in writer.levels] == [(3, 700, 1000), (3, 350, 500), (3, 175, 250)]
    zarray = json.loads((zpath / "1" / ".zarray").read_text())
    assert zarray["chunks"] == [3, 512, 512]
    assert zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] in ("zlib", "blosc")
    assert zarray["fill_value"] == 255
    # a viewer sees white glass at every level before anything is written
    reader = open_slide(tmp_path)
    assert (reader.read_region(2, 0, 0, 10, 10) == 255).all()
    meta = reader.attrs["gigagen"]
    assert meta["synthetic"] is True and meta["status"] == "generating"
    assert (meta["seed"], meta["model"], meta["mpp"]) == (7, "tiny", 0.5)
    scales = [d["coordinateTransformations"][0]["scale"]
              for d in reader.attrs["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]


def test_metadata_validates_as_ngff_04(tmp_path: Path) -> None:
    image_mod = pytest.importorskip("ome_zarr_models.v04.image")
    write_slide(tmp_path, 1000, 700)
    image = image_mod.Image.from_zarr(zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="r"))
    ms = image.ome_attributes.multiscales[0]
    assert [a.unit for a in ms.axes] == [None, "micrometer", "micrometer"]
    assert [c.color for c in image.ome_attributes.omero.channels] == ["FF0000", "00FF00", "0000FF"]


def test_create_refuses_existing_path(tmp_path: Path) -> None:
    create_slide(tmp_path / "s.zarr", 300, 300, 0.5, {})
    with pytest.raises(UserError):
        create_slide(tmp_path / "s.zarr", 300, 300, 0.5, {})


def test_open_slide_rejects_non_slide(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        open_slide(tmp_path)


def test_pyramid_matches_reference_for_odd_sizes(tmp_path: Path) -> None:
    # odd sizes at several levels and a small chunk so chunk borders fall everywhere
    width, height = 1001, 603
    img = write_slide(tmp_path, width, height, chunk=128, min_level_size=64)
    reader = open_slide(tmp_path)
    ref = _reference_pyramid(img, len(reader.level_shapes))
    assert reader.level_shapes[-1] == (38, 63)
    for k, expected in enumerate(ref):
        got = reader.read_region(k, 0, 0, *reader.level_shapes[k][::-1])
        np.testing.assert_array_equal(got, expected.transpose(1, 2, 0), err_msg=f"level {k}")
    assert reader.attrs["gigagen"]["status"] == "complete"


def test_read_region_clips_to_level(tmp_path: Path) -> None:
    img = write_slide(tmp_path, 1000, 700)
    reader = open_slide(tmp_path)
    got = reader.read_region(0, 900, 600, 300, 300)
    assert got.shape == (100, 100, 3)
    np.testing.assert_array_equal(got, img[:, 600:, 900:].transpose(1, 2, 0))
    with pytest.raises(ValueError):
        reader.read_region(0, 2000, 0, 10, 10)
    with pytest.raises(ValueError):
        reader.read_region(9, 0, 0, 10, 10)


def test_full_chunk_write_reads_no_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = create_slide(tmp_path / "slide.ome.zarr", 1200, 1200, 0.5, {}, chunk=256)
    writer.write_tile(0, 0, synthetic_rgb(256, 256))  # neighbour of the next write exists
    reads: list[str] = []
    original = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    writer.write_tile(256, 256, synthetic_rgb(512, 512, seed=1))
    assert [k for k in reads if not k.endswith((".zarray", ".zattrs", ".zgroup"))] == []


def test_write_tile_rejects_misaligned_and_clips_edges(tmp_path: Path) -> None:
    writer = create_slide(tmp_path / "slide.ome.zarr", 700, 600, 0.5, {}, chunk=256)
    with pytest.raises(ValueError):
        writer.write_tile(10, 0, synthetic_rgb(256, 256))
    with pytest.raises(ValueError):
        writer.write_tile(0, 0, synthetic_rgb(100, 256))  # partial chunk inside the slide
    edge = synthetic_rgb(512, 512)
    writer.write_tile(512, 512, edge)  # 88x188 of it lies inside; the rest is dropped
    np.testing.assert_array_equal(writer.level0[:, 512:, 512:], edge[:, :88, :188])


def test_build_pyramid_reads_bounded_blocks(tmp_path: Path) -> None:
    writer = create_slide(tmp_path / "slide.ome.zarr", 1500, 1100, 0.5, {}, chunk=128)
    shapes: list[tuple[int, ...]] = []

    class Spy:
        def __init__(self, arr: zarr.Array) -> None:
            self.arr, self.shape = arr, arr.shape

        def __getitem__(self, sel):  # type: ignore[no-untyped-def]
            out = self.arr[sel]
            shapes.append(out.shape)
            return out

        def __setitem__(self, sel, value):  # type: ignore[no-untyped-def]
            self.arr[sel] = value

    writer.levels = [Spy(a) for a in writer.levels]  # type: ignore[misc]
    done: list[int] = []
    writer.build_pyramid(progress=done.append)
    assert max(s[1] * s[2] for s in shapes) <= 256 * 256
    assert sum(done) == writer.pyramid_chunk_count() == len(shapes) > 1


def test_open_writer_resumes(tmp_path: Path) -> None:
    create_slide(tmp_path / "slide.ome.zarr", 600, 600, 0.5, {"seed": 1}, chunk=256)
    writer = open_writer(tmp_path)
    writer.write_tile(0, 0, synthetic_rgb(256, 256))
    writer.finish({"elapsed_s": 1.5})
    meta = open_slide(tmp_path).attrs["gigagen"]
    assert meta["status"] == "complete" and meta["elapsed_s"] == 1.5 and meta["seed"] == 1


def test_downsample2_rounds_and_replicates_edges() -> None:
    src = np.array([[[0, 1, 10], [2, 2, 20], [100, 101, 200]]], dtype=np.uint8)
    out = downsample2(src)
    assert out.tolist() == [[[1, 15], [101, 200]]]  # (5+2)//4, (60+2)//4, (402+2)//4


def test_fast_chunk_path_equals_zarr_path(tmp_path: Path) -> None:
    writer = create_slide(tmp_path / "slide.ome.zarr", 700, 600, 0.5, {}, chunk=128)
    img = synthetic_rgb(600, 700)
    for y in range(0, 600, 128):  # leave the bottom-right chunks unwritten (fill value)
        for x in range(0, 700 - 128 * (y >= 512), 128):
            writer.write_tile(y, x, img[:, y : y + 128, x : x + 128])
    fast = open_slide(tmp_path)
    slow = open_slide(tmp_path)
    assert fast._fast_dirs[0] is not None  # gigagen's own layout takes the fast path
    slow._fast_dirs = [None] * len(slow.levels)
    rng = np.random.default_rng(0)
    regions = [(0, 0, 700, 600), (600, 500, 300, 300), (127, 127, 2, 2)]
    regions += [tuple(int(v) for v in rng.integers(0, 650, 4)) for _ in range(20)]
    for x, y, w, h in regions:
        if w and h and x < 700 and y < 600:
            np.testing.assert_array_equal(fast.read_region(0, x, y, w, h), slow.read_region(0, x, y, w, h))
    assert (fast.read_region(0, 650, 590, 10, 10) == 255).all()


def test_other_compressors_read_through_zarr(tmp_path: Path) -> None:
    """A store written by another tool (blosc) is not eligible for the fast path but reads the same."""
    import numcodecs

    group = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w", zarr_format=2)
    img = synthetic_rgb(300, 400)
    arr = group.create_array("0", shape=img.shape, dtype="uint8", chunks=(3, 128, 128),
                             compressors=[numcodecs.Blosc(cname="lz4")],
                             chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[:] = img
    from gigagen.io.omezarr import multiscales_attrs

    group.attrs["multiscales"] = multiscales_attrs(1, 0.25)
    reader = open_slide(tmp_path)
    assert reader._fast_dirs == [None] and reader.mpp == 0.25
    np.testing.assert_array_equal(reader.read_region(0, 0, 0, 400, 300), img.transpose(1, 2, 0))
