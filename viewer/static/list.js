/* Slide list page: one row per slide from /api/slides, refreshed while any is being generated. */
(function () {
  "use strict";

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children || []) {
      node.append(child);
    }
    return node;
  }

  function describe(value) {
    if (value === null || value === undefined) {
      return "\u2013";
    }
    if (typeof value === "object") {
      return value.name || value.id || value.path || JSON.stringify(value);
    }
    return String(value);
  }

  function sizeText(s) {
    const mm = (px) => (px * s.mpp / 1000).toFixed(1);
    return `${s.width.toLocaleString("en")} \u00d7 ${s.height.toLocaleString("en")} px` +
      ` (${mm(s.width)} \u00d7 ${mm(s.height)} mm, ${s.mpp} \u00b5m/px)`;
  }

  function row(s) {
    const thumb = el("img", { src: s.thumbnail_url, alt: `Thumbnail of ${s.name}`, className: "thumb", loading: "lazy" });
    const link = el("a", { href: s.viewer_url, textContent: s.name, className: "slide-link" });
    const badge = el("span", { className: `badge ${s.status}`, textContent: s.status });
    const created = s.created ? s.created.replace("T", " ").replace(/\+00:00$/, " UTC") : "\u2013";
    return el("tr", {}, [
      el("td", {}, [el("a", { href: s.viewer_url }, [thumb])]),
      el("td", {}, [link]),
      el("td", { textContent: sizeText(s) }),
      el("td", { textContent: created }),
      el("td", { textContent: describe(s.seed) }),
      el("td", { textContent: describe(s.model) }),
      el("td", {}, [badge]),
    ]);
  }

  async function load() {
    const status = document.getElementById("status");
    const table = document.getElementById("slides");
    let slides;
    try {
      const response = await fetch("/api/slides", { cache: "no-store" });
      if (!response.ok) {
        throw new Error(`server answered ${response.status}`);
      }
      slides = await response.json();
    } catch (err) {
      status.textContent = `Could not list slides: ${err.message}`;
      return;
    }
    table.tBodies[0].replaceChildren(...slides.map(row));
    table.hidden = slides.length === 0;
    status.textContent = slides.length === 0
      ? "No slides found under the served folders yet."
      : `${slides.length} slide${slides.length === 1 ? "" : "s"}`;
    if (slides.some((s) => s.status !== "complete")) {
      setTimeout(load, 10000);
    }
  }

  load();
})();
