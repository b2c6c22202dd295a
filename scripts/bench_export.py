#!/usr/bin/env python
"""Benchmark gigagen's TIFF export against libvips tiffsave on the same synthetic slide.

Writes a SIZE x SIZE slide store with H&E-like content (no model needed), then exports it to
each format in a fresh subprocess, so every peak-memory figure (ru_maxrss) belongs to one
export alone. libvips gets the same level-0 pixels as an uncompressed, memory-mapped .v file
and builds its own pyramid with tiffsave(pyramid=True), the way people use it.

    .venv/bin/python scripts/bench_export.py [--size 4096] [--workers N] [--json]

Throughput is level-0 megapixels per second of wall time (a pyramid adds about 1/3 more).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# run from a clone without an editable install too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, kind, format or vips mode, compression)
CASES = [
    ("gigagen ome-tiff jpeg q90", "gigagen", "ome-tiff", "jpeg"),
    ("gigagen tiff jpeg q90", "gigagen", "tiff", "jpeg"),
    ("gigagen ome-tiff deflate", "gigagen", "ome-tiff", "deflate"),
    ("gigagen ome-tiff zstd", "gigagen", "ome-tiff", "zstd"),
    ("vips tiffsave pyramid jpeg q90", "vips", "pyramid", "jpeg"),
    ("vips tiffsave subifd pyramid jpeg q90", "vips", "subifd", "jpeg"),
    ("vips tiffsave pyramid deflate", "vips", "pyramid", "deflate"),
]


def he_tile(y0: int, x0: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """H&E-like tile -> (3, h, w) uint8: shaded pink stroma, blurred purple nuclei, one gap."""
    rng = np.random.default_rng([seed, y0, x0])
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    shade = 0.85 + 0.15 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    img = np.array([236, 170, 200], np.float32)[:, None, None] * shade[None]
    n = h * w // 1300
    cy, cx, r = rng.uniform(y0, y0 + h, n), rng.uniform(x0, x0 + w, n), rng.uniform(3, 7, n)
    d2 = np.full((h, w), np.inf, np.float32)
    for y, x, rad in zip(cy, cx, r):
        a, b = int(max(y - rad - y0, 0)), int(min(y + rad + 1 - y0, h))
        c, e = int(max(x - rad - x0, 0)), int(min(x + rad + 1 - x0, w))
        d = ((yy[a:b, c:e] - y) ** 2 + (xx[a:b, c:e] - x) ** 2) / rad**2
        d2[a:b, c:e] = np.minimum(d2[a:b, c:e], d)
    alpha = np.clip((1.2 - np.sqrt(d2)) / 0.4, 0, 1)  # soft nucleus edge
    purple = np.array([90, 50, 140], np.float32)[:, None, None]
    img = img * (1 - alpha) + purple * alpha
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_slide(slide_dir: Path, size: int) -> dict[str, float]:
    """Write the benchmark slide store; returns zarr write and pyramid timings."""
    from gigagen.io.omezarr import create_slide

    writer = create_slide(slide_dir / "slide.ome.zarr", size, size, 0.5,
                          {"seed": 0, "model": "bench-pattern"})
    tiles = [(y, x) for y in range(0, size, 512) for x in range(0, size, 512)]
    pixels = [he_tile(y, x, min(512, size - y), min(512, size - x)) for y, x in tiles]
    t0 = time.perf_counter()
    for (y, x), px in zip(tiles, pixels):
        writer.write_tile(y, x, px)
    t1 = time.perf_counter()
    writer.build_pyramid()
    writer.finish({})
    t2 = time.perf_counter()
    return {"zarr_write_s": t1 - t0, "pyramid_s": t2 - t1}


def write_vips_input(slide_dir: Path) -> Path:
    """Level 0 as an uncompressed vips file, so libvips streams it from a page-cache mmap."""
    import pyvips

    from gigagen.io.omezarr import open_slide

    reader = open_slide(slide_dir)
    rgb = reader.read_region(0, 0, 0, reader.width, reader.height)
    path = slide_dir / "level0.v"
    pyvips.Image.new_from_memory(rgb.tobytes(), reader.width, reader.height, 3, "uchar").write_to_file(str(path))
    return path


def child(kind: str, mode: str, compression: str, slide_dir: Path, workers: int | None) -> dict:
    """Run one export in this (fresh) process -> timing and peak memory."""
    base_rss = _maxrss_mb()
    out = Path(tempfile.mkdtemp(prefix=f"out-{kind}-{mode}-{compression}-", dir=slide_dir))
    if kind == "gigagen":
        from gigagen.io.export import export_slide

        (out / "slide.ome.zarr").symlink_to(slide_dir / "slide.ome.zarr")
        _reset_peak()
        base_rss = _maxrss_mb()
        t0 = time.perf_counter()
        paths = export_slide(out, formats=(mode,), compression=compression, quality=90, workers=workers)
        seconds = time.perf_counter() - t0
        path = next(iter(paths.values()))
    else:
        import pyvips

        image = pyvips.Image.new_from_file(str(slide_dir / "level0.v"))
        _reset_peak()
        base_rss = _maxrss_mb()
        path = out / "slide.tif"
        opts = {"tile": True, "tile_width": 512, "tile_height": 512, "pyramid": True,
                "bigtiff": True, "subifd": mode == "subifd", "region_shrink": "mean",
                "resunit": "cm", "xres": 1e4 / 0.5 / 10, "yres": 1e4 / 0.5 / 10}
        opts |= {"compression": "jpeg", "Q": 90} if compression == "jpeg" else {
            "compression": "deflate", "predictor": "horizontal"}
        t0 = time.perf_counter()
        image.tiffsave(str(path), **opts)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _maxrss_mb(), "base_rss_mb": base_rss,
            "bytes": path.stat().st_size, "layout": _tiff_layout(path)}


def _maxrss_mb() -> float:
    """Peak RSS of this process in MB (VmHWM: unlike ru_maxrss it does not inherit the
    parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Restart the peak-RSS count so it covers the export alone (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _tiff_layout(path: Path) -> str:
    """Compression, photometric and chroma subsampling of the first page, e.g. 'jpeg ycbcr 2x2'."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        sub = page.tags.get("YCbCrSubSampling")
        sub_text = "x".join(map(str, sub.value)) if sub and page.photometric == 6 else ""
        return f"{page.compression.name.lower()} {page.photometric.name.lower()} {sub_text}".strip()


def run_case(kind: str, mode: str, compression: str, slide_dir: Path, workers: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, mode, compression, str(slide_dir)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {mode} {compression} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=None, help="gigagen encoder threads (default: cores, max 4)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; best time, highest peak (default 3)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "MODE", "COMPRESSION", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, mode, compression, d = args.child
        print(json.dumps(child(kind, mode, compression, Path(d), args.workers)))
        return 0

    with tempfile.TemporaryDirectory(prefix="gigagen-bench-") as tmp:
        slide_dir = Path(tmp)
        prep = make_slide(slide_dir, args.size)
        write_vips_input(slide_dir)
        mp = args.size * args.size / 1e6
        results = []
        for label, kind, mode, compression in CASES:
            runs = [run_case(kind, mode, compression, slide_dir, args.workers) for _ in range(args.repeat)]
            r = min(runs, key=lambda run: run["seconds"])
            r["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
            results.append({"case": label, "mp_per_s": mp / r["seconds"], **r})
    import pyvips
    import tifffile

    meta = {"size": args.size, "level0_megapixels": mp, "cpus": os.cpu_count(),
            "zarr_write_mp_per_s": mp / prep["zarr_write_s"], "zarr_pyramid_s": prep["pyramid_s"],
            "tifffile": tifffile.__version__, "libvips": pyvips.version(0), "vips_minor": pyvips.version(1)}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    print(f"slide {args.size}x{args.size} ({mp:.1f} MP level 0), {os.cpu_count()} cpus, "
          f"tifffile {tifffile.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}")
    print(f"zarr store: write {meta['zarr_write_mp_per_s']:.1f} MP/s, pyramid build {prep['pyramid_s']:.2f} s")
    print("peak RSS = high-water mark during the export; base = RSS before it (imports, open store)")
    print(f"{'case':38s} {'MP/s':>6s} {'sec':>6s} {'peak MB':>8s} {'base MB':>8s} {'file MB':>8s}  layout")
    for r in results:
        print(f"{r['case']:38s} {r['mp_per_s']:6.1f} {r['seconds']:6.2f} {r['peak_rss_mb']:8.0f} "
              f"{r['base_rss_mb']:8.0f} {r['bytes'] / 1e6:8.1f}  {r['layout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
