/*
 * Viewer page /slides/ID: OpenSeadragon over the slide's DZI, scale bar, metadata panel.
 * The URL hash keeps the view (#x=..&y=..&zoom=.., image pixels and screen px per image px),
 * so a copied link opens the same place. Slides still being generated are re-read every few
 * seconds: new tiles are loaded underneath and swapped in once complete, then the final
 * revision (cacheable forever) replaces them when the generator finishes.
 */
(function () {
  "use strict";

  // How often a slide still being generated is re-read (?poll_ms= overrides, e.g. for tests).
  const POLL_MS = Math.max(250, Number(new URLSearchParams(location.search).get("poll_ms")) || 5000);
  const slideId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
  let viewer = null;
  let refreshCount = 0;

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
  }

  function describe(value) {
    if (value === null || value === undefined) {
      return "\u2013";
    }
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function fillPanel(info) {
    document.title = `${info.name} \u2013 gigagen`;
    document.getElementById("title").textContent = info.name;
    const badge = document.getElementById("status-badge");
    badge.textContent = info.status;
    badge.className = `badge ${info.status}`;
    badge.hidden = false;
    const meta = info.attrs.gigagen || {};
    const mm = (px) => (px * info.mpp / 1000).toFixed(2);
    const facts = [
      ["Size", `${info.width.toLocaleString("en")} \u00d7 ${info.height.toLocaleString("en")} px`],
      ["Field", `${mm(info.width)} \u00d7 ${mm(info.height)} mm`],
      ["Pixel size", `${info.mpp} \u00b5m/px (level 0)`],
      ["Levels", `${info.levels} stored, ${info.dz_levels} deep-zoom`],
      ["Seed", describe(info.seed)],
      ["Model", describe(info.model)],
      ["Created", describe(info.created)],
      ["Status", info.status],
      ["Generator", `${describe(meta.generator)} ${describe(meta.version)}`],
      ["Synthetic", describe(meta.synthetic)],
    ];
    const list = document.getElementById("facts");
    list.replaceChildren();
    for (const [key, value] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = value;
      list.append(dt, dd);
    }
    const layoutSection = document.getElementById("layout-section");
    if (info.layout_url) {
      const img = document.getElementById("layout");
      const url = `${info.layout_url}?rev=${encodeURIComponent(info.rev)}`;
      if (img.getAttribute("src") !== url) {
        img.src = url;
      }
    }
    layoutSection.hidden = !info.layout_url;
    document.getElementById("run").textContent =
      info.run === null || info.run === undefined ? "No run.json in the slide directory." : JSON.stringify(info.run, null, 2);
    const runError = document.getElementById("run-error");
    runError.textContent = info.run_error || "";
    runError.hidden = !info.run_error;
  }

  function viewFromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const view = ["x", "y", "zoom"].map((k) => Number(params.get(k)));
    return view.every((v) => isFinite(v)) && params.has("zoom") && view[2] > 0 ? view : null;
  }

  function restoreView(item) {
    const view = viewFromHash();
    if (!view) {
      return;
    }
    viewer.viewport.zoomTo(item.imageToViewportZoom(view[2]), null, true);
    viewer.viewport.panTo(item.imageToViewportCoordinates(view[0], view[1]), true);
  }

  function saveView() {
    const item = viewer.world.getItemAt(0);
    if (!item) {
      return;
    }
    const center = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
    const zoom = item.viewportToImageZoom(viewer.viewport.getZoom(true));
    const hash = `#x=${Math.round(center.x)}&y=${Math.round(center.y)}&zoom=${zoom.toPrecision(4)}`;
    history.replaceState(null, "", hash);
  }

  /**
   * Load url on top of the current image; drop the old one once the new one is drawn. Resolves when
   * the swap is over, so a slow machine or link never piles up images: the next poll waits for it.
   */
  function swapTileSource(url) {
    return new Promise(function (resolve) {
      const old = viewer.world.getItemAt(0);
      viewer.addTiledImage({
        tileSource: url,
        index: viewer.world.getItemCount(),
        success: function (event) {
          let done = false;
          const finish = function () {
            if (!done && old) {
              viewer.world.removeItem(old);
            }
            done = true;
            resolve();
          };
          if (event.item.getFullyLoaded()) {
            finish();
          } else {
            event.item.addOnceHandler("fully-loaded-change", finish);
            setTimeout(finish, 10000);
          }
        },
        error: function () {
          resolve(); // keep showing the old image; the next poll tries again
        },
      });
    });
  }

  function createViewer(info) {
    viewer = OpenSeadragon({
      id: "viewer",
      prefixUrl: "/vendor/openseadragon/images/",
      tileSources: info.dzi_url,
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.2,
      showRotationControl: false,
      crossOriginPolicy: false,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    window.gigagenViewer = viewer; // for tests and the browser console
    viewer.gigagenScalebar({ mpp: info.mpp });
    viewer.addOnceHandler("open", function () {
      restoreView(viewer.world.getItemAt(0));
      viewer.addHandler("animation-finish", saveView);
    });
    viewer.addHandler("open-failed", function (event) {
      showError(`Could not open the slide: ${event.message}`);
    });
  }

  async function fetchInfo() {
    const response = await fetch(`/api/slides/${encodeURIComponent(slideId)}`, { cache: "no-store" });
    if (!response.ok) {
      throw new Error(response.status === 404 ? `There is no slide "${slideId}".` : `Server answered ${response.status}.`);
    }
    return response.json();
  }

  async function poll(lastInfo) {
    let info;
    try {
      info = await fetchInfo();
    } catch (err) {
      setTimeout(() => poll(lastInfo), POLL_MS);
      return;
    }
    if (info.status === "complete") {
      swapTileSource(info.dzi_url);
      fillPanel(info);
      return;
    }
    refreshCount += 1;
    fillPanel(info);
    await swapTileSource(`${info.dzi_url}&refresh=${refreshCount}`);
    setTimeout(() => poll(info), POLL_MS);
  }

  async function main() {
    let info;
    try {
      info = await fetchInfo();
    } catch (err) {
      showError(err.message);
      return;
    }
    fillPanel(info);
    if (!window.OpenSeadragon) {
      showError("OpenSeadragon is not installed on the server: run `npm ci --prefix viewer` (scripts/setup.sh does).");
      return;
    }
    createViewer(info);
    if (info.status !== "complete") {
      setTimeout(() => poll(info), POLL_MS);
    }
  }

  main();
})();
