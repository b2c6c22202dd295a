"""gigagen.io.export / tiff and the `gigagen export` / `gigagen info` commands.

Reader compatibility (Bio-Formats, OpenSlide) is proved in test_export_readers.py; these tests
check file structure, streaming, atomicity and the user-facing edges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _io_helpers import write_slide
from gigagen.cli import main
from gigagen.errors import UserError
from gigagen.io import tiles as tiles_mod
from gigagen.io.export import export_slide, slide_info
from gigagen.io.omezarr import SlideReader, create_slide, open_slide


@pytest.fixture()
def slide(tmp_path: Path) -> Path:
    write_slide(tmp_path, 1000, 700)
    return tmp_path


def test_ome_tiff_structure(slide: Path) -> None:
    path = export_slide(slide)["ome-tiff"]
    assert path == slide / "slide.ome.tif"
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff and tf.is_ome
        page = tf.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert len(tf.pages) == 1  # lower levels hide in SubIFDs, not top-level pages
        assert len(page.subifds) == 2
        assert [lv.shape for lv in tf.series[0].levels] == [(700, 1000, 3), (350, 500, 3), (175, 250, 3)]
        for lv in tf.series[0].levels[1:]:
            assert lv.keyframe.subfiletype == 1
        # JPEG as YCbCr 4:2:0, never the 4:4:4 variant Bio-Formats mis-colours
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.tags["YCbCrSubSampling"].value == (2, 2)
        xres = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert xres[0] / xres[1] == pytest.approx(1e4 / 0.5)
        xml = tf.ome_metadata
    assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeXUnit="µm"' in xml
    assert "SYNTHETIC" in xml and '<M K="synthetic">true</M>' in xml and '<M K="seed">0</M>' in xml


def test_generic_tiff_structure(slide: Path) -> None:
    path = export_slide(slide, formats=["tiff"], compression="deflate")["tiff"]
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_ome
        assert [p.shape for p in tf.pages] == [(700, 1000, 3), (350, 500, 3), (175, 250, 3)]
        assert [p.subfiletype for p in tf.pages] == [0, 1, 1]
        assert all(p.is_tiled for p in tf.pages)
        for k, p in enumerate(tf.pages):
            x = p.tags["XResolution"].value
            assert x[0] / x[1] == pytest.approx(1e4 / (0.5 * 2**k))
        assert "SYNTHETIC" in tf.pages[0].description
        reader = open_slide(slide)
        for k, p in enumerate(tf.pages):  # lossless: identical to the store at every level
            np.testing.assert_array_equal(p.asarray(), reader.read_region(k, 0, 0, 1000, 700))


def test_export_streams_tile_sized_reads(slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    areas: list[int] = []
    original = SlideReader.read_region

    def spy(self: SlideReader, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = original(self, level, x, y, w, h)
        areas.append(out.shape[0] * out.shape[1])
        return out

    monkeypatch.setattr(SlideReader, "read_region", spy)
    calls: list[tuple[str, int, int]] = []
    export_slide(slide, formats=("ome-tiff", "tiff"), tile=256,
                 progress=lambda f, d, t: calls.append((f, d, t)))
    assert max(areas) <= 256 * 256
    per_format = 12 + 4 + 1  # 4x3 tiles at level 0, 2x2 at 1, 1 at 2
    assert len(areas) == 2 * per_format
    assert calls[-1] == ("tiff", per_format, per_format)
    assert [c[1] for c in calls if c[0] == "ome-tiff"] == list(range(1, per_format + 1))


def test_edge_tiles_padded_by_replication() -> None:
    block = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = tiles_mod.pad_tile(block, 16)
    assert padded.shape == (16, 16, 3)
    np.testing.assert_array_equal(padded[15, 15], block[1, 2])  # no black seam for JPEG to ring


def test_refuses_to_overwrite_unless_asked(slide: Path) -> None:
    path = export_slide(slide)["ome-tiff"]
    before = path.read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        export_slide(slide, compression="deflate")
    assert path.read_bytes() == before
    export_slide(slide, compression="deflate", overwrite=True)
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_interrupted_export_leaves_no_file(slide: Path) -> None:
    def interrupt(fmt: str, done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_slide(slide, formats=["ome-tiff"], progress=interrupt)
    leftovers = [p.name for p in slide.iterdir() if p.name != "slide.ome.zarr"]
    assert leftovers == []


def test_interrupted_overwrite_keeps_old_file(slide: Path) -> None:
    path = export_slide(slide)["ome-tiff"]
    before = path.read_bytes()

    def interrupt(fmt: str, done: int, total: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        export_slide(slide, overwrite=True, progress=interrupt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in slide.iterdir()) == ["slide.ome.tif", "slide.ome.zarr"]


@pytest.mark.parametrize(
    "kwargs",
    [{"formats": ["png"]}, {"formats": []}, {"compression": "webp"}, {"quality": 0}, {"tile": 100}],
)
def test_bad_options_are_user_errors(slide: Path, kwargs: dict) -> None:
    with pytest.raises(UserError):
        export_slide(slide, **kwargs)


def test_incomplete_slide_is_refused(tmp_path: Path) -> None:
    create_slide(tmp_path / "slide.ome.zarr", 300, 200, 0.5, {})
    with pytest.raises(UserError, match="not complete"):
        export_slide(tmp_path)
    assert export_slide(tmp_path, allow_incomplete=True)["ome-tiff"].is_file()


def test_slide_info_reports_everything(slide: Path) -> None:
    (slide / "run.json").write_text(json.dumps({"config": {"seed": 0, "steps": 20}}))
    export_slide(slide, formats=["ome-tiff", "tiff"])
    info = slide_info(slide)
    assert (info["width"], info["height"], info["mpp"], info["magnification"]) == (1000, 700, 0.5, 20.0)
    assert [(lv["width"], lv["height"], lv["mpp"]) for lv in info["levels"]] == [
        (1000, 700, 0.5), (500, 350, 1.0), (250, 175, 2.0)]
    assert info["synthetic"] is True and info["gigagen"]["model"] == "test-pattern"
    assert info["exports"]["ome-tiff"]["compression"] == "jpeg"
    assert info["exports"]["tiff"]["levels"] == [[700, 1000], [350, 500], [175, 250]]
    assert info["run"]["config"]["steps"] == 20


def test_cli_export_and_info(slide: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(slide), "--formats", "ome-tiff,tiff", "--compression", "zstd", "--quiet"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(slide / "slide.ome.tif"), str(slide / "slide.tif")]
    assert main(["export", str(slide), "--quiet"]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert main(["info", str(slide), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["exports"]["tiff"]["compression"] == "zstd"
    assert main(["info", str(slide)]) == 0
    text = capsys.readouterr().out
    assert "0.5 um/px (20x)" in text and "synthetic  yes" in text
    # a slide as `gigagen slide` writes it by default also has a Deep Zoom pack, which has no TIFF tags
    assert main(["export", str(slide), "--formats", "dzi", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(slide)]) == 0
    dzi_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dzi"))
    assert "slide.dzi.zip" in dzi_line and "JPEG tiles of 256 px" in dzi_line


def test_cli_rejects_missing_slide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert main(["export", str(tmp_path)]) == 2  # exists but is not a slide
    assert capsys.readouterr().err.count("\n") == 2


def test_quality_reaches_the_encoder(slide: Path) -> None:
    sizes = []
    for q in (50, 95):
        path = export_slide(slide, quality=q, overwrite=True)["ome-tiff"]
        sizes.append(path.stat().st_size)
    assert sizes[0] < 0.7 * sizes[1]
