"""The real viewer page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Loads a generated slide, and checks what a user would see: tissue on the canvas, tiles fetched
from the app at several levels, a scale bar that follows the zoom, the metadata panel, a deep
link that restores the view, and no request to any other host.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _viewer_helpers import running_server, tissue_fraction
from PIL import Image

from viewer import Settings
from viewer.demo import write_demo_slide
from viewer.settings import openseadragon_installed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install chromium)", allow_module_level=True)
# Everything else the page needs is part of the set-up, so its absence is a failure, not a skip.
from playwright import sync_api  # noqa: E402

SLIDE = "tissue-demo"
GROWING = "growing"
TILE_RE = re.compile(rf"/api/slides/{SLIDE}/slide_files/(\d+)/(\d+)_(\d+)\.jpeg")
FULLY_LOADED = """() => {
  const v = window.gigagenViewer;
  return !!v && v.world.getItemCount() === 1 && v.world.getItemAt(0).getFullyLoaded();
}"""


@pytest.fixture(scope="module")
def slides_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer-browser")
    write_demo_slide(root / SLIDE, 2048, 1536, seed=1)
    write_demo_slide(root / GROWING, 1024, 768, seed=2, complete=False, rows_done=0)
    return root


@pytest.fixture(scope="module")
def base_url(slides_root):
    assert openseadragon_installed(Settings(roots=())), "OpenSeadragon missing: npm ci --prefix viewer"
    with running_server(Settings(roots=(slides_root,), refresh_interval_s=0.0)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class PageLog:
    """Every request a page makes, and every console error, with foreign hosts blocked."""

    def __init__(self, page, base_url: str) -> None:
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.base_url = base_url
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.route("**/*", self._route)

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base_url + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def tile_levels(self) -> set[int]:
        return {int(m[1]) for u in self.requests if (m := TILE_RE.search(u))}


def settle(page) -> None:
    """Wait until OpenSeadragon has drawn every tile the current view needs."""
    page.wait_for_timeout(200)  # let the viewer notice a view change before asking
    page.wait_for_function(FULLY_LOADED, timeout=20000)


def viewer_pixels(page) -> np.ndarray:
    png = page.locator("#viewer").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def scalebar_um(page) -> float:
    return float(page.locator(".gg-scalebar").get_attribute("data-micrometres"))


def test_slide_list_links_to_the_viewer(browser, base_url):
    page = browser.new_page()
    log = PageLog(page, base_url)
    page.goto(base_url + "/")
    page.locator("a.slide-link").first.wait_for(timeout=10000)
    assert page.locator("a.slide-link").all_inner_texts() == [GROWING, SLIDE]
    assert page.locator("span.badge.generating").count() == 1
    link = page.locator("a.slide-link", has_text=SLIDE)
    page.wait_for_function("() => { const i = document.querySelector('img.thumb');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=10000)
    assert "2,048" in page.locator("table.slides").inner_text()
    link.click()
    page.wait_for_url(f"{base_url}/slides/{SLIDE}")
    assert not log.foreign and not log.errors, (log.foreign, log.errors)
    page.close()


def test_viewer_shows_tissue_fetched_from_the_app_only(browser, base_url):
    page = browser.new_page(viewport={"width": 960, "height": 640})
    log = PageLog(page, base_url)
    page.goto(f"{base_url}/slides/{SLIDE}")
    page.wait_for_function(FULLY_LOADED, timeout=20000)
    pixels = viewer_pixels(page)
    assert tissue_fraction(pixels) > 0.2, "the canvas should show stained tissue"
    assert pixels.std() > 20, "the canvas should not be one flat colour"
    home_levels = log.tile_levels()
    assert home_levels, "tiles must come from the app's Deep Zoom endpoint"
    for title in ("Zoom in", "Zoom out", "Go home", "Toggle full page"):
        assert page.locator(f'#viewer [title="{title}"]').count() == 1, title
    assert page.locator("#viewer .navigator").count() == 1
    um_home = scalebar_um(page)
    assert page.locator(".gg-scalebar-label").inner_text().endswith(("µm", "mm"))

    # Zoom to full resolution in the middle of the tissue: finer tiles, shorter scale bar.
    page.evaluate("""() => {
      const v = window.gigagenViewer, item = v.world.getItemAt(0);
      v.viewport.zoomTo(item.imageToViewportZoom(1.0), null, true);
      v.viewport.panTo(item.imageToViewportCoordinates(1024, 768), true);
    }""")
    settle(page)
    assert max(log.tile_levels()) == 11 > max(home_levels)  # 2048 px wide: level 11 is 1:1
    assert scalebar_um(page) < um_home
    # At 1:1 and 0.5 um/px a micrometre is 2 screen pixels.
    bar_px = page.evaluate("() => document.querySelector('.gg-scalebar-bar').getBoundingClientRect().width")
    assert abs(bar_px - 2 * scalebar_um(page)) < 1.5
    zoomed = viewer_pixels(page)
    assert tissue_fraction(zoomed) > 0.5
    assert (zoomed.sum(axis=2) < 400).mean() > 0.02, "nuclei (dark purple) should be visible at 1:1"

    # Panel: metadata, run configuration and layout image.
    assert '"seed": 1' in page.locator("#run").inner_text()
    assert "2,048 × 1,536 px" in page.locator("#facts").inner_text()
    page.wait_for_function("() => document.getElementById('layout').naturalWidth > 0", timeout=10000)

    assert not log.foreign, f"requests to other hosts: {log.foreign}"
    assert all(u.startswith((base_url + "/", "data:", "blob:")) for u in log.requests)
    assert not log.errors, log.errors
    page.close()


def test_scalebar_picks_round_lengths(browser, base_url):
    page = browser.new_page()
    page.goto(f"{base_url}/slides/{SLIDE}")
    page.wait_for_function("() => !!window.OpenSeadragon && !!OpenSeadragon.gigagenScalebar")
    got = page.evaluate("""() => {
      const s = OpenSeadragon.gigagenScalebar;
      return [s.niceLength(170), s.niceLength(0.7), s.niceLength(4999), s.niceLength(20),
              s.formatLength(2000), s.formatLength(0.5), s.formatLength(200)];
    }""")
    assert got == [100, 0.5, 2000, 20, "2 mm", "0.5 µm", "200 µm"]
    page.close()


def test_deep_link_restores_the_view(browser, base_url):
    page = browser.new_page(viewport={"width": 800, "height": 560})
    log = PageLog(page, base_url)
    page.goto(f"{base_url}/slides/{SLIDE}#x=1500&y=600&zoom=0.5")
    page.wait_for_function(FULLY_LOADED, timeout=20000)
    center, zoom = page.evaluate("""() => {
      const v = window.gigagenViewer, item = v.world.getItemAt(0);
      const c = item.viewportToImageCoordinates(v.viewport.getCenter(true));
      return [[c.x, c.y], item.viewportToImageZoom(v.viewport.getZoom(true))];
    }""")
    assert abs(zoom - 0.5) < 0.01
    assert abs(center[0] - 1500) < 5 and abs(center[1] - 600) < 5
    assert not log.foreign and not log.errors, (log.foreign, log.errors)
    page.close()


def test_unknown_slide_page_says_so(browser, base_url):
    page = browser.new_page()
    response = page.goto(f"{base_url}/slides/no-such-slide")
    assert response.status == 404
    assert "no slide" in page.locator("body").inner_text().lower()
    page.close()


def test_slide_being_generated_updates_in_place(browser, base_url, slides_root):
    from gigagen.io.omezarr import open_writer
    from viewer.demo import tissue

    page = browser.new_page(viewport={"width": 800, "height": 600})
    log = PageLog(page, base_url)
    page.goto(f"{base_url}/slides/{GROWING}?poll_ms=400")
    page.wait_for_function(FULLY_LOADED, timeout=20000)
    assert page.locator("#status-badge").inner_text() == "generating"
    assert tissue_fraction(viewer_pixels(page)) < 0.01  # nothing generated yet: white glass
    writer = open_writer(slides_root / GROWING)
    for y0 in (0, 512):
        for x0 in (0, 512):
            writer.write_tile(y0, x0, tissue(x0, y0, 512, min(512, 768 - y0), 1024, 768, seed=2))
    writer.build_pyramid()
    writer.finish({})
    page.wait_for_function("() => document.getElementById('status-badge').textContent === 'complete'",
                           timeout=20000)
    settle(page)
    assert tissue_fraction(viewer_pixels(page)) > 0.2, "new pixels replace the blank ones without reload"
    dzi = [u for u in log.requests if u.endswith(".dzi") or ".dzi?" in u]
    assert len({u.split("rev=")[1].split("&")[0] for u in dzi}) == 2  # generating rev, then final rev
    assert not log.foreign and not log.errors, (log.foreign, log.errors)
    page.close()
