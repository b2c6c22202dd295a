"""The pre-encoded Deep Zoom pack (slide.dzi.zip): contents, byte-identity with the viewer's own
tiles, the viewer serving it as is, and falling back to the zarr when it is stale or damaged."""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _viewer_helpers import TESTCLIENT_WARNING, TestClient
from PIL import Image

from gigagen.cli import main
from gigagen.io.deepzoom import DeepZoomGeometry, render_tile
from gigagen.io.dzi import DZI_NAME, attrs_digest, open_pack, tile_name
from gigagen.io.export import export_slide, slide_info
from gigagen.io.omezarr import open_slide, open_writer
from viewer import Settings, create_app
from viewer.demo import write_demo_slide

pytestmark = pytest.mark.filterwarnings(TESTCLIENT_WARNING)

W, H = 1100, 700  # odd tiling: edge tiles, and Deep Zoom levels coarser than the coarsest stored level
Q = 85  # the pack's quality; the viewer below encodes its own tiles at 80


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dzi")
    slide = write_demo_slide(root / "demo", W, H, seed=3)
    export_slide(slide, formats=["dzi"], quality=Q)
    return slide


def _client(root: Path) -> TestClient:
    return TestClient(create_app(Settings(roots=(root,), refresh_interval_s=0.0, rescan_interval_s=0.0,
                                          jpeg_quality=80)))


def _geometry(slide: Path) -> DeepZoomGeometry:
    return DeepZoomGeometry(open_slide(slide).level_shapes, 256, 0)


def test_pack_is_a_complete_static_deep_zoom_pyramid(packed: Path) -> None:
    g = _geometry(packed)
    with zipfile.ZipFile(packed / DZI_NAME) as zf:
        names = set(zf.namelist())
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        dzi = ET.fromstring(zf.read("slide.dzi"))
        size = dzi.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert (dzi.get("TileSize"), dzi.get("Overlap"), dzi.get("Format")) == ("256", "0", "jpeg")
        assert (int(size.get("Width")), int(size.get("Height"))) == (W, H)
        expected = {tile_name(lv, c, r) for lv, (cols, rows) in enumerate(g.dz_tiles)
                    for c in range(cols) for r in range(rows)}
        assert {n for n in names if n.startswith("slide_files/")} == expected
        for level in (g.max_level, g.max_level - 3, 0):  # edge tiles are cut to the image, not padded
            cols, rows = g.dz_tiles[level]
            x0, y0, x1, y1 = g.dz_tile_bounds(level, cols - 1, rows - 1)
            img = Image.open(io.BytesIO(zf.read(tile_name(level, cols - 1, rows - 1))))
            assert img.format == "JPEG" and img.size == (x1 - x0, y1 - y0)
        meta = json.loads(zf.read("gigagen.json"))
    assert meta["quality"] == Q and meta["rev"] == attrs_digest(open_slide(packed).attrs)


def test_every_pack_tile_is_the_tile_the_viewer_would_render(packed: Path) -> None:
    reader, g = open_slide(packed), _geometry(packed)
    pack = open_pack(packed / DZI_NAME, attrs_digest(reader.attrs), g)
    assert pack is not None and pack.quality == Q
    for level, (cols, rows) in enumerate(g.dz_tiles):
        for col in range(cols):
            for row in range(rows):
                want = render_tile(reader.read_region, g, level, col, row, "jpeg", Q)
                assert pack.tile(level, col, row) == want, (level, col, row)
    assert pack.tile(g.max_level + 1, 0, 0) is None
    pack.close()


def test_viewer_serves_pack_bytes_unchanged_and_png_from_the_zarr(packed: Path) -> None:
    g = _geometry(packed)
    pack = open_pack(packed / DZI_NAME, attrs_digest(open_slide(packed).attrs), g)
    with _client(packed.parent) as client:
        (slide_id,) = [s["id"] for s in client.get("/api/slides").json()]
        for level, col, row in [(g.max_level, 0, 0), (g.max_level, 4, 2), (g.max_level - 2, 1, 0), (3, 0, 0)]:
            r = client.get(f"/api/slides/{slide_id}/slide_files/{level}/{col}_{row}.jpeg")
            assert r.status_code == 200 and r.content == pack.tile(level, col, row)  # q85 pack, not a q80 render
            assert r.headers["etag"]
            again = client.get(f"/api/slides/{slide_id}/slide_files/{level}/{col}_{row}.jpeg",
                               headers={"if-none-match": r.headers["etag"]})
            assert again.status_code == 304
        png = client.get(f"/api/slides/{slide_id}/slide_files/{g.max_level}/0_0.png")
        stored = open_slide(packed).read_region(0, 0, 0, 256, 256)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), stored)
    pack.close()


def _rendered_q80(slide: Path, level: int, col: int, row: int) -> bytes:
    return render_tile(open_slide(slide).read_region, _geometry(slide), level, col, row, "jpeg", 80)


def test_stale_pack_of_a_rewritten_slide_is_ignored(packed: Path, tmp_path: Path) -> None:
    slide = shutil.copytree(packed, tmp_path / "root" / "demo")
    open_writer(slide / "slide.ome.zarr").finish({"note": "rewritten after the pack"})  # new revision
    g = _geometry(slide)
    assert open_pack(slide / DZI_NAME, attrs_digest(open_slide(slide).attrs), g) is None
    with _client(slide.parent) as client:
        (slide_id,) = [s["id"] for s in client.get("/api/slides").json()]
        r = client.get(f"/api/slides/{slide_id}/slide_files/{g.max_level}/1_1.jpeg")
        assert r.status_code == 200 and r.content == _rendered_q80(slide, g.max_level, 1, 1)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-meta"])
def test_damaged_pack_falls_back_to_the_zarr_not_a_500(packed: Path, tmp_path: Path, damage: str) -> None:
    slide = shutil.copytree(packed, tmp_path / "root" / "demo")
    path = slide / DZI_NAME
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip" * 100)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("slide.dzi", "<Image/>")
    g = _geometry(slide)
    with _client(slide.parent) as client:
        (slide_id,) = [s["id"] for s in client.get("/api/slides").json()]
        r = client.get(f"/api/slides/{slide_id}/slide_files/{g.max_level}/2_1.jpeg")
        assert r.status_code == 200 and r.content == _rendered_q80(slide, g.max_level, 2, 1)


def test_export_command_writes_pack_refuses_to_overwrite_and_info_reports_it(
        packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = shutil.copytree(packed, tmp_path / "demo")
    (slide / DZI_NAME).unlink()
    assert main(["export", str(slide), "--formats", "dzi", "--quality", "70", "--quiet"]) == 0
    before = (slide / DZI_NAME).read_bytes()
    capsys.readouterr()
    assert main(["export", str(slide), "--formats", "dzi", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (slide / DZI_NAME).read_bytes() == before
    info = slide_info(slide)["exports"]["dzi"]
    assert info["quality"] == 70 and info["tiles"] == sum(c * r for c, r in _geometry(slide).dz_tiles)


def test_slide_command_writes_the_pack_by_default(tmp_path: Path, tiny_bundle: Path) -> None:
    out = tmp_path / "s"
    assert main(["slide", "--checkpoint", str(tiny_bundle), "--steps", "2", "--quiet", "--size", "512",
                 "--out", str(out), "--seed", "1"]) == 0
    assert (out / "slide.ome.tif").is_file()
    reader = open_slide(out)
    pack = open_pack(out / DZI_NAME, attrs_digest(reader.attrs), _geometry(out))
    assert pack is not None and pack.quality == 90
    assert pack.tile(9, 1, 1) == render_tile(reader.read_region, _geometry(out), 9, 1, 1, "jpeg", 90)
    pack.close()


def test_run_config_knows_every_export_format() -> None:
    from gigagen import config
    from gigagen.io import export

    assert set(config.FORMATS) == set(export.FORMATS)
