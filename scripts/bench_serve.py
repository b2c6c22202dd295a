#!/usr/bin/env python
"""Benchmark `gigagen serve` against OpenSlide's Flask deepzoom server on the same slide.

Writes a 4096x4096 synthetic H&E-like slide (viewer.demo: procedural, no model) and its
generic pyramidal TIFF, starts both servers on 127.0.0.1 with the same Deep Zoom geometry
(256 px tiles, no overlap, JPEG quality 80), and loads each from this process with N
concurrent keep-alive clients replaying simulated viewer sessions: random viewports
(1280x800) at a mix of zoom levels weighted towards full resolution, every tile of each view.

Phases, per server:
  cold    a freshly started server process; every tile of the slide requested once
          (shuffled by viewport), repeated over --cold-runs restarts
  warm    the same process afterwards, DURATION seconds of the session mix
and for gigagen also
  nocache DURATION seconds with --cache-mb 0
gigagen runs twice: on the slide as `gigagen slide` leaves it (with slide.dzi.zip, its
pre-encoded Deep Zoom tiles, written here at the benchmark's quality), and on a copy without
the pack, where every tile is read from the OME-Zarr and encoded (the path for slides still
being generated, PNG tiles and other tilings).

Prints tiles/s, p50/p99 latency and the gigagen/OpenSlide ratio; --json writes the numbers.
Load is bounded (duration, client count) and never leaves the loopback interface.

    .venv/bin/python scripts/bench_serve.py [--duration 20] [--clients 32]
Needs Debian packages python3-openslide, python3-flask and python-openslide-examples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
TILE = 256
QUALITY = 80
VIEW_W, VIEW_H = 1280, 800
DEEPZOOM_SERVER = Path("/usr/share/doc/python-openslide-examples/examples/deepzoom/deepzoom_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


# ---------------------------------------------------------------- slide and TIFF


def write_bench_slide(work: Path, size: int) -> Path:
    from viewer.demo import write_demo_slide

    slide = work / "slides" / f"bench-{size}"
    if not (slide / "slide.ome.zarr").exists():
        t0 = time.perf_counter()
        write_demo_slide(slide, size, size, seed=7)
        print(f"wrote {size}x{size} slide in {time.perf_counter() - t0:.1f} s: {slide}", flush=True)
    return slide


def write_pack(slide: Path) -> Path:
    """slide.dzi.zip at the benchmark's JPEG quality (`gigagen slide` writes it at --quality)."""
    from gigagen.io.dzi import DZI_NAME
    from gigagen.io.export import export_slide

    pack = slide / DZI_NAME
    if not pack.exists():
        t0 = time.perf_counter()
        export_slide(slide, formats=("dzi",), quality=QUALITY)
        print(f"wrote {pack.name} (q{QUALITY}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return pack


def copy_without_pack(slide: Path) -> Path:
    """The same slide without slide.dzi.zip: every tile rendered from the OME-Zarr."""
    plain = slide.with_name(slide.name + "-zarr-only")
    if not plain.exists():
        shutil.copytree(slide, plain, ignore=shutil.ignore_patterns("*.dzi.zip", "*.tif"))
    return plain


def write_generic_tiff(slide: Path) -> tuple[Path, str]:
    """slide.tif for OpenSlide: gigagen's exporter if present, else pyvips tiffsave."""
    tif = slide / "slide.tif"
    if tif.exists():
        return tif, "existing slide.tif"
    try:
        from gigagen.io.export import export_slide
    except ImportError:
        export_slide = None
    if export_slide is not None:
        export_slide(slide, formats=("tiff",), compression="jpeg", quality=90)
        return tif, "gigagen.io.export.export_slide (jpeg q90)"
    import numpy as np
    import pyvips

    from gigagen.io.omezarr import open_slide

    reader = open_slide(slide)
    rgb = np.ascontiguousarray(reader.read_region(0, 0, 0, reader.width, reader.height))
    image = pyvips.Image.new_from_memory(rgb.data, reader.width, reader.height, 3, "uchar")
    px_per_mm = 1000.0 / reader.mpp  # vips takes pixels per mm and writes them in resunit
    image.tiffsave(str(tif), tile=True, tile_width=512, tile_height=512, pyramid=True,
                   compression="jpeg", Q=90, xres=px_per_mm, yres=px_per_mm, resunit="cm")
    return tif, "pyvips tiffsave in this script (gigagen.io.export not available)"


# ---------------------------------------------------------------- request mix


def dz_dims(width: int, height: int) -> list[tuple[int, int]]:
    levels = math.ceil(math.log2(max(width, height)))
    dims = [(width, height)]
    for _ in range(levels):
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims[::-1]


def viewport_tiles(dims: list[tuple[int, int]], level: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """Tiles of one 1280x800 view at `level` centred at a random point of the slide."""
    w, h = dims[level]
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x0, x1 = max(0, int(cx - VIEW_W / 2)), min(w, int(cx + VIEW_W / 2))
    y0, y1 = max(0, int(cy - VIEW_H / 2)), min(h, int(cy + VIEW_H / 2))
    tiles = [(level, c, r) for r in range(y0 // TILE, (max(y1, y0 + 1) - 1) // TILE + 1)
             for c in range(x0 // TILE, (max(x1, x0 + 1) - 1) // TILE + 1)]
    rng.shuffle(tiles)
    return tiles


def session_mix(dims: list[tuple[int, int]], n_views: int, seed: int) -> list[tuple[int, int, int]]:
    """A user's tile requests: overviews now and then, most time zoomed in (20x, 10x)."""
    top = len(dims) - 1
    levels = [top, top - 1, top - 2, top - 3, top - 4]  # 20x, 10x, 5x, 2.5x, 1.25x
    weights = [0.40, 0.25, 0.15, 0.12, 0.08]
    rng = random.Random(seed)
    out: list[tuple[int, int, int]] = []
    for _ in range(n_views):
        out += viewport_tiles(dims, rng.choices(levels, weights)[0], rng)
    return out


def all_tiles(dims: list[tuple[int, int]], seed: int) -> list[tuple[int, int, int]]:
    tiles = [(lvl, c, r) for lvl, (w, h) in enumerate(dims)
             for c in range(math.ceil(w / TILE)) for r in range(math.ceil(h / TILE))]
    random.Random(seed).shuffle(tiles)
    return tiles


# ---------------------------------------------------------------- HTTP load


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.bytes += other.bytes
        self.seconds += other.seconds

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        return {"tiles": len(lat), "errors": self.errors, "seconds": round(self.seconds, 2),
                "tiles_per_s": round(len(lat) / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(pct(0.50), 2), "p99_ms": round(pct(0.99), 2),
                "mb_per_s": round(self.bytes / 1e6 / self.seconds, 1) if self.seconds else 0.0}


class Connection:
    """Minimal HTTP/1.1 client connection; reconnects when the server closes (HTTP/1.0 peers)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, int]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode())
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        version, status = status_line.split()[:2]
        length, close = None, version == b"HTTP/1.0"
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection":
                close = value.strip().lower() == b"close"
        body = await (self.reader.readexactly(length) if length is not None else self.reader.read())
        if close or length is None:
            await self.close()
        return int(status), len(body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def client(port: int, url_of, requests: list, deadline: float | None, result: Result) -> None:
    conn = Connection(port)
    i = 0
    try:
        while i < len(requests) or deadline is not None:
            if deadline is not None and time.perf_counter() >= deadline:
                break
            address = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, size = await conn.get(url_of(*address))
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                await conn.close()
                continue
            if status == 200:
                result.latencies.append(time.perf_counter() - t0)
                result.bytes += size
            else:
                result.errors += 1
    finally:
        await conn.close()


async def run_load(port: int, url_of, per_client: list[list], duration: float | None) -> Result:
    result = Result()
    t0 = time.perf_counter()
    deadline = t0 + duration if duration is not None else None
    await asyncio.gather(*(client(port, url_of, reqs, deadline, result) for reqs in per_client))
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Gigagen:
    name = "gigagen serve (FastAPI/uvicorn)"

    def __init__(self, slide: Path, cache_mb: float) -> None:
        self.slide, self.cache_mb = slide, cache_mb
        self.slide_id = slide.name

    def start(self) -> subprocess.Popen:
        self.port = free_port()
        cmd = [sys.executable, "-m", "gigagen.cli", "serve", str(self.slide.parent),
               "--host", HOST, "--port", str(self.port), "--cache-mb", str(self.cache_mb)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://{HOST}:{self.port}/api/slides/{self.slide_id}/slide.dzi", proc)
        return proc

    def url(self, level: int, col: int, row: int) -> str:
        return f"/api/slides/{self.slide_id}/slide_files/{level}/{col}_{row}.jpeg"


class OpenSlideServer:
    name = "OpenSlide deepzoom_server.py (Flask, generic TIFF)"

    def __init__(self, tif: Path) -> None:
        self.tif = tif

    def start(self) -> subprocess.Popen:
        self.port = free_port()
        cmd = [SYSTEM_PYTHON, str(DEEPZOOM_SERVER), "-l", HOST, "-p", str(self.port),
               "-s", str(TILE), "-e", "0", "-Q", str(QUALITY), str(self.tif)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://{HOST}:{self.port}/slide.dzi", proc)
        return proc

    def url(self, level: int, col: int, row: int) -> str:
        return f"/slide_files/{level}/{col}_{row}.jpeg"


def split(requests: list, clients: int) -> list[list]:
    return [requests[i::clients] for i in range(clients)]


def bench_server(server, args, dims, sessions, warm: bool = True) -> dict[str, dict]:
    out: dict[str, dict] = {}
    cold = Result()
    proc = None
    for run in range(args.cold_runs if warm else 0):
        if proc is not None:
            stop(proc)
        proc = server.start()
        requests = split(all_tiles(dims, run), args.clients)
        cold.merge(asyncio.run(run_load(server.port, server.url, requests, None)))
    if warm:
        out["cold"] = cold.summary()
        print(f"  cold  {fmt(out['cold'])}", flush=True)
    if proc is None:
        proc = server.start()
    try:
        asyncio.run(run_load(server.port, server.url, split(sessions, args.clients), 2.0))  # settle
        result = asyncio.run(run_load(server.port, server.url, split(sessions, args.clients), args.duration))
        key = "warm" if warm else "nocache"
        out[key] = result.summary()
        print(f"  {key:5} {fmt(out[key])}", flush=True)
    finally:
        stop(proc)
    return out


def fmt(s: dict) -> str:
    return (f"{s['tiles_per_s']:8.1f} tiles/s  p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms"
            f"  ({s['tiles']} tiles, {s['errors']} errors, {s['mb_per_s']} MB/s, {s['seconds']} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per timed phase (max 120)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections (max 256)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh-server passes over all tiles")
    parser.add_argument("--size", type=int, default=4096, help="slide width and height")
    parser.add_argument("--workdir", type=Path, default=None, help="keep slide and TIFF here")
    parser.add_argument("--skip-openslide", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args()
    args.duration = min(max(args.duration, 1.0), 120.0)
    args.clients = min(max(args.clients, 1), 256)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="gigagen-bench-"))
    slide = write_bench_slide(work, args.size)
    dims = dz_dims(args.size, args.size)
    sessions = session_mix(dims, n_views=400, seed=1)
    print(f"request mix: {len(sessions)} tile requests from 400 simulated views; "
          f"{args.clients} clients, {args.duration:.0f} s per timed phase, loopback only", flush=True)
    results: dict[str, dict] = {"config": {"size": args.size, "tile": TILE, "quality": QUALITY,
                                           "clients": args.clients, "duration_s": args.duration,
                                           "cpus": os.cpu_count()}}
    write_pack(slide)
    print(Gigagen.name + ", slide.dzi.zip", flush=True)
    results["gigagen"] = bench_server(Gigagen(slide, 256), args, dims, sessions)
    results["gigagen"].update(bench_server(Gigagen(slide, 0), args, dims, sessions, warm=False))
    print(Gigagen.name + ", OME-Zarr only (no pack)", flush=True)
    plain = copy_without_pack(slide)
    results["gigagen_zarr"] = bench_server(Gigagen(plain, 256), args, dims, sessions)
    results["gigagen_zarr"].update(bench_server(Gigagen(plain, 0), args, dims, sessions, warm=False))

    if not args.skip_openslide:
        if not (DEEPZOOM_SERVER.exists() and Path(SYSTEM_PYTHON).exists()):
            print("OpenSlide deepzoom_server.py not found: apt-get install python3-openslide "
                  "python3-flask python-openslide-examples", file=sys.stderr)
            return 1
        tif, how = write_generic_tiff(slide)
        print(f"generic TIFF: {tif} ({how})", flush=True)
        results["config"]["tiff"] = how
        print(OpenSlideServer.name, flush=True)
        results["openslide"] = bench_server(OpenSlideServer(tif), args, dims, sessions)
        for key, label in (("gigagen", "gigagen"), ("gigagen_zarr", "gigagen zarr-only")):
            for phase in ("cold", "warm"):
                g, o = results[key][phase], results["openslide"][phase]
                ratio = g["tiles_per_s"] / o["tiles_per_s"] if o["tiles_per_s"] else float("inf")
                results.setdefault("ratio", {})[f"{key}_{phase}"] = round(ratio, 2)
                print(f"{phase}: {label} / OpenSlide throughput = {ratio:.2f}x; "
                      f"{label} p99 {g['p99_ms']} ms vs {o['p99_ms']} ms", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
