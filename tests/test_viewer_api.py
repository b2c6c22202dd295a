"""The viewer's HTTP API through FastAPI's TestClient: listing, DZI, tiles, caching, 4xx."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _viewer_helpers import TESTCLIENT_WARNING, TestClient, make_roots, tissue_fraction
from PIL import Image

from gigagen.io.omezarr import open_slide, open_writer
from viewer import Settings, create_app
from viewer.demo import tissue
from viewer.settings import openseadragon_installed

pytestmark = pytest.mark.filterwarnings(TESTCLIENT_WARNING)

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return make_roots(tmp_path_factory.mktemp("viewer-api"))


@pytest.fixture(scope="module")
def client(roots) -> TestClient:
    settings = Settings(roots=(roots["root"],), refresh_interval_s=0.0, rescan_interval_s=0.0)
    with TestClient(create_app(settings)) as c:
        yield c


def image(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def tile_url(slide_id: str, level: int, col: int, row: int, fmt: str = "jpeg", rev: str | None = None) -> str:
    url = f"/api/slides/{slide_id}/slide_files/{level}/{col}_{row}.{fmt}"
    return url + (f"?rev={rev}" if rev else "")


def test_listing_shows_every_slide_under_the_root_and_nothing_else(client):
    slides = client.get("/api/slides").json()
    ids = [s["id"] for s in slides]
    assert sorted(ids) == ["demo-a", "in-progress", "linked-files"]  # not escape, broken, outside
    a = next(s for s in slides if s["id"] == "demo-a")
    assert (a["width"], a["height"], a["mpp"], a["status"], a["seed"]) == (1000, 700, 0.5, "complete", 3)
    assert a["model"]["name"] == "demo-numpy" and a["levels"] == 3 and a["created"]
    assert a["dzi_url"] == f"/api/slides/demo-a/slide.dzi?rev={a['rev']}"
    assert a["viewer_url"] == "/slides/demo-a"
    assert next(s for s in slides if s["id"] == "in-progress")["status"] == "generating"


def test_detail_carries_run_configuration_layout_and_attributes(client, roots):
    d = client.get("/api/slides/demo-a").json()
    assert d["run"]["seed"] == 3 and d["run"]["command"] == "demo" and d["run_error"] is None
    assert d["attrs"]["gigagen"]["status"] == "complete"
    assert d["attrs"]["multiscales"][0]["version"] == "0.4"
    assert (d["tile_size"], d["overlap"], d["dz_levels"]) == (256, 0, 11)
    assert d["level_shapes"] == [[700, 1000], [350, 500], [175, 250]]
    layout = image(client.get(d["layout_url"]))
    assert layout.shape[:2] == (175, 250) and tissue_fraction(layout) > 0.3
    assert client.get(d["run_url"]).json()["width"] == 1000
    thumb = image(client.get(d["thumbnail_url"]))
    assert max(thumb.shape[:2]) <= 256 and tissue_fraction(thumb) > 0.3


def test_dzi_descriptor_matches_the_slide(client):
    rev = client.get("/api/slides/demo-a").json()["rev"]
    r = client.get(f"/api/slides/demo-a/slide.dzi?rev={rev}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert r.headers["cache-control"] == IMMUTABLE
    node = ET.fromstring(r.content)
    assert (node.get("TileSize"), node.get("Overlap"), node.get("Format")) == ("256", "0", "jpeg")
    size = node[0]
    assert (size.get("Width"), size.get("Height")) == ("1000", "700")
    assert client.get("/api/slides/demo-a/slide.dzi").headers["cache-control"] == "no-cache"


def test_full_resolution_png_tiles_equal_the_stored_pixels(client, roots):
    reader = open_slide(roots["finished"])
    for col, row in [(0, 0), (1, 1), (3, 2)]:  # (3, 2) is the bottom-right edge tile
        got = image(client.get(tile_url("demo-a", 10, col, row, "png")))
        want = reader.read_region(0, col * 256, row * 256, 256, 256)
        assert got.shape == want.shape and np.array_equal(got, want)
    assert image(client.get(tile_url("demo-a", 10, 3, 2, "png"))).shape == (188, 232, 3)
    half = image(client.get(tile_url("demo-a", 9, 1, 1, "png")))
    assert np.array_equal(half, reader.read_region(1, 256, 256, 256, 256))
    assert half.shape == (94, 244, 3)


def test_jpeg_tiles_at_every_level_show_tissue_and_have_the_right_size(client):
    expected = {10: (256, 256), 9: (256, 256), 8: (175, 250), 6: (44, 63), 1: (2, 2), 0: (1, 1)}
    for level, shape in expected.items():
        r = client.get(tile_url("demo-a", level, 0, 0))
        assert r.headers["content-type"] == "image/jpeg"
        assert image(r).shape[:2] == shape
    middle = image(client.get(tile_url("demo-a", 10, 1, 1)))
    assert tissue_fraction(middle) > 0.8  # the tile at the centre of the blob is all tissue
    reference = tissue(256, 256, 256, 256, 1000, 700, seed=3).transpose(1, 2, 0)
    assert np.abs(middle.astype(int) - reference).mean() < 6  # JPEG error only
    assert image(client.get(tile_url("demo-a", 10, 1, 1, "jpg"))).shape == (256, 256, 3)


def test_finished_tiles_are_immutable_and_revalidate_with_etag(client):
    rev = client.get("/api/slides/demo-a").json()["rev"]
    r = client.get(tile_url("demo-a", 10, 2, 1, rev=rev))
    assert r.headers["cache-control"] == IMMUTABLE
    etag = r.headers["etag"]
    again = client.get(tile_url("demo-a", 10, 2, 1, rev=rev), headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = client.get(tile_url("demo-a", 10, 1, 1, rev=rev))
    assert other.headers["etag"] != etag
    stale = client.get(tile_url("demo-a", 10, 2, 1, rev="0123456789abcdef"))
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    several = {"If-None-Match": '"nope", ' + etag}
    assert client.get(tile_url("demo-a", 10, 2, 1), headers=several).status_code == 304
    assert client.get(tile_url("demo-a", 10, 2, 1), headers={"If-None-Match": '"nope"'}).status_code == 200


def test_slide_being_generated_serves_what_exists_and_is_never_immutable(client):
    info = client.get("/api/slides/in-progress").json()
    assert info["status"] == "generating"
    written = client.get(tile_url("in-progress", 11, 2, 1, rev=info["rev"]))
    assert written.headers["cache-control"] == "no-cache"
    assert tissue_fraction(image(written)) > 0.5  # chunk row 0 was written
    blank = image(client.get(tile_url("in-progress", 11, 2, 2)))
    assert blank.min() > 240  # not generated yet: white glass (fill value)
    etag = written.headers["etag"]
    assert client.get(tile_url("in-progress", 11, 2, 1), headers={"If-None-Match": etag}).status_code == 304


def test_generation_progress_and_completion_show_up_without_restart(tmp_path):
    from viewer.demo import write_demo_slide

    slide = write_demo_slide(tmp_path / "live", 600, 600, seed=9, complete=False, rows_done=0)
    settings = Settings(roots=(tmp_path,), refresh_interval_s=0.0, rescan_interval_s=0.0)
    with TestClient(create_app(settings)) as c:
        assert image(c.get(tile_url("live", 10, 1, 1))).min() > 240
        writer = open_writer(slide)
        writer.write_tile(0, 0, tissue(0, 0, 512, 512, 600, 600, seed=9))
        assert tissue_fraction(image(c.get(tile_url("live", 10, 1, 1)))) > 0.5
        old_rev = c.get("/api/slides/live").json()["rev"]
        writer.build_pyramid()
        writer.finish({})
        info = c.get("/api/slides/live").json()
        assert info["status"] == "complete" and info["rev"] != old_rev
        r = c.get(tile_url("live", 10, 1, 1, rev=info["rev"]))
        assert r.headers["cache-control"] == IMMUTABLE


@pytest.mark.parametrize(
    "path",
    [
        "/api/slides/nope",
        "/api/slides/nope/slide.dzi",
        "/api/slides/nope/slide_files/0/0_0.jpeg",
        "/api/slides/escape",  # a symlink out of the root is not a slide
        "/api/slides/broken",  # unreadable store: skipped, not a 500
        "/api/slides/not-a-slide/slide.dzi",
        "/api/slides/demo-a/slide_files/11/0_0.jpeg",  # level above the top
        "/api/slides/demo-a/slide_files/10/4_0.jpeg",  # column past the edge
        "/api/slides/demo-a/slide_files/10/0_3.jpeg",  # row past the edge
        "/api/slides/demo-a/slide_files/0/1_0.jpeg",
        "/api/slides/demo-a/slide_files/10/999999999_0.jpeg",
        "/api/slides/linked-files/layout.png",  # symlinked out of the slide directory
        "/api/slides/linked-files/run.json",
        "/api/slides/in-progress/nothing.png",
        "/api/nothing",
    ],
)
def test_unknown_things_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "TOP-SECRET" not in r.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/slides/demo-a/slide_files/-1/0_0.jpeg",
        "/api/slides/demo-a/slide_files/65/0_0.jpeg",
        "/api/slides/demo-a/slide_files/x/0_0.jpeg",
        "/api/slides/demo-a/slide_files/10/0_0.webp",
        "/api/slides/demo-a/slide_files/10/0-0.jpeg",
        "/api/slides/demo-a/slide_files/10/-1_0.jpeg",
        "/api/slides/demo-a/slide_files/10/0_0.jpeg.png",
        "/api/slides/demo-a/slide_files/10/99999999999999999999_0.jpeg",
        "/api/slides/demo-a/slide_files/10/0_0.jpeg?rev=../x",
        "/api/slides/.hidden",
        "/api/slides/" + "a" * 200,
    ],
)
def test_malformed_requests_are_422(client, path):
    r = client.get(path)
    assert r.status_code == 422, (path, r.status_code, r.text)


@pytest.mark.parametrize(
    "path",
    [
        "/api/slides/..%2F..%2Foutside/slide.dzi",
        "/api/slides/%2e%2e/slide.dzi",
        "/api/slides/demo-a/..%2F..%2F..%2Foutside%2Fsecret.txt",
        "/api/slides/demo-a/slide_files/10/..%2F..%2F..%2Flayout.png",
        "/api/slides/..%5C..%5Coutside/run.json",
        "/static/..%2F..%2Fslides.py",
        "/static/../../outside/secret.txt",
        "/vendor/openseadragon/..%2F..%2F..%2Fpackage.json",
        "/slides/..%2F..%2Foutside",
        "/api/slides/%00/slide.dzi",
        "//etc/passwd",
    ],
)
def test_path_traversal_never_escapes_the_roots(client, roots, path):
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "TOP-SECRET" not in r.text and "zarr_format" not in r.text


def test_wrong_method_is_405(client):
    assert client.post("/api/slides").status_code == 405
    assert client.delete("/api/slides/demo-a").status_code == 405


def test_malformed_run_json_is_reported_not_a_500(tmp_path):
    from viewer.demo import write_demo_slide

    slide = write_demo_slide(tmp_path / "bad-run", 300, 200)
    (slide / "run.json").write_text("{oops")
    (slide / "layout.png").unlink()
    with TestClient(create_app(Settings(roots=(tmp_path,)))) as c:
        d = c.get("/api/slides/bad-run").json()
        assert d["run"] is None and "unreadable" in d["run_error"] and d["layout_url"] is None
        assert c.get("/api/slides/bad-run/run.json").status_code == 404
        assert c.get("/api/slides/bad-run/layout.png").status_code == 404


def test_slide_ids_are_unique_and_stable(tmp_path):
    from viewer.demo import write_demo_slide

    for parent in ("x", "y"):
        write_demo_slide(tmp_path / parent / "same", 300, 200)
    settings = Settings(roots=(tmp_path,), rescan_interval_s=0.0)
    with TestClient(create_app(settings)) as c:
        first = [s["id"] for s in c.get("/api/slides").json()]
        write_demo_slide(tmp_path / "a" / "same", 300, 200)  # appears later, sorts first
        second = [s["id"] for s in c.get("/api/slides").json()]
    assert sorted(first) == ["same", "same-2"]
    assert sorted(second) == ["same", "same-2", "same-3"]


def test_slide_directory_and_store_can_be_given_directly(roots):
    for root in (roots["finished"], roots["finished"] / "slide.ome.zarr"):
        with TestClient(create_app(Settings(roots=(root,)))) as c:
            assert [s["id"] for s in c.get("/api/slides").json()] == ["demo-a"]
            assert c.get("/api/slides/demo-a/layout.png").status_code == 200


def test_pages_and_security_headers(client):
    index = client.get("/")
    assert index.status_code == 200 and "/static/list.js" in index.text
    csp = index.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert index.headers["x-content-type-options"] == "nosniff"
    page = client.get("/slides/demo-a")
    assert page.status_code == 200 and "/vendor/openseadragon/openseadragon.min.js" in page.text
    assert "/static/scalebar.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    missing = client.get("/slides/nope")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    for asset in ("/static/slide.js", "/static/list.js", "/static/scalebar.js", "/static/viewer.css"):
        assert client.get(asset).status_code == 200


def test_openseadragon_is_served_from_the_app(client):
    assert openseadragon_installed(Settings(roots=())), "OpenSeadragon missing: npm ci --prefix viewer"
    js = client.get("/vendor/openseadragon/openseadragon.min.js")
    assert js.status_code == 200 and "OpenSeadragon" in js.text[:5000]
    assert client.get("/vendor/openseadragon/images/zoomin_rest.png").status_code == 200


def test_openapi_schema_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    tile = paths["/api/slides/{slide_id}/slide_files/{level}/{tile}"]["get"]
    assert {"200", "304", "404", "422"} <= set(tile["responses"])
    assert set(tile["responses"]["200"]["content"]) == {"image/jpeg", "image/png"}
    assert "/api/slides" in paths and "/" not in paths


def test_overlapping_tiles_span_stored_chunks_exactly(roots):
    settings = Settings(roots=(roots["root"],), tile_size=254, overlap=1)
    reader = open_slide(roots["finished"])
    with TestClient(create_app(settings)) as c:
        assert ET.fromstring(c.get("/api/slides/demo-a/slide.dzi").content).get("Overlap") == "1"
        for col, row, (x0, y0, x1, y1) in [(0, 0, (0, 0, 255, 255)), (2, 2, (507, 507, 763, 700)),
                                          (3, 1, (761, 253, 1000, 509))]:
            got = image(c.get(tile_url("demo-a", 10, col, row, "png")))
            assert np.array_equal(got, reader.read_region(0, x0, y0, x1 - x0, y1 - y0))


def test_loopback_server_refuses_foreign_host_names(roots):
    settings = Settings(roots=(roots["root"],), allowed_hosts=("127.0.0.1", "localhost", "::1"))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/slides").status_code == 200
        assert c.get("/api/slides", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/api/slides", headers={"Host": "[::1]:8000"}).status_code == 200
        assert c.get("/api/slides", headers={"Host": "attacker.example"}).status_code == 400
        assert c.get("/", headers={"Host": "127.0.0.1.attacker.example:8000"}).status_code == 400
