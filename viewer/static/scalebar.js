/*
 * gigagen scale bar for OpenSeadragon: a bar of a round length (1, 2 or 5 x 10^n micrometres)
 * in the bottom-left corner that follows the zoom. No such plugin is on npm, hence this one.
 *
 *   viewer.gigagenScalebar({ mpp: 0.5 })   // micrometres per level-0 image pixel
 *
 * Screen pixels per micrometre = (screen pixels per image pixel) / mpp, i.e. pixels per metre
 * is 1e6 / mpp times the image zoom.
 */
(function (OSD) {
  "use strict";
  if (!OSD) {
    return;
  }

  /** Largest 1/2/5 x 10^n not above maxUm (micrometres). */
  function niceLength(maxUm) {
    if (!(maxUm > 0) || !isFinite(maxUm)) {
      return 0;
    }
    const base = Math.pow(10, Math.floor(Math.log10(maxUm)));
    let best = base;
    for (const m of [2, 5]) {
      if (m * base <= maxUm) {
        best = m * base;
      }
    }
    return Number(best.toPrecision(3));
  }

  /** "500 µm", "2 mm", "0.5 µm". */
  function formatLength(um) {
    if (um >= 1000) {
      return Number((um / 1000).toPrecision(3)) + " mm";
    }
    return Number(um.toPrecision(3)) + " \u00b5m";
  }

  OSD.Viewer.prototype.gigagenScalebar = function (options) {
    const viewer = this;
    const mpp = options.mpp;
    const maxWidth = options.maxWidthPx || 160;
    const element = document.createElement("div");
    element.className = "gg-scalebar";
    const label = document.createElement("span");
    label.className = "gg-scalebar-label";
    const bar = document.createElement("div");
    bar.className = "gg-scalebar-bar";
    element.appendChild(label);
    element.appendChild(bar);
    viewer.addControl(element, { anchor: OSD.ControlAnchor.BOTTOM_LEFT, autoFade: false });

    function update() {
      const item = viewer.world.getItemAt(0);
      if (!item || !(mpp > 0)) {
        element.hidden = true;
        return;
      }
      const screenPerImagePx = item.viewportToImageZoom(viewer.viewport.getZoom(true));
      const pxPerUm = screenPerImagePx / mpp;
      const um = niceLength(maxWidth / pxPerUm);
      element.hidden = um === 0;
      bar.style.width = (um * pxPerUm).toFixed(1) + "px";
      label.textContent = formatLength(um);
      element.dataset.micrometres = String(um);
    }

    for (const name of ["open", "animation", "resize", "update-viewport", "add-item"]) {
      viewer.addHandler(name, update);
    }
    update();
    return { element: element, update: update };
  };

  OSD.gigagenScalebar = { niceLength: niceLength, formatLength: formatLength };
})(window.OpenSeadragon);
