"""Scale benchmark: peak memory, wall time and disk for growing slides, the 65536 plan, 1 vs 2 workers.

    .venv/bin/python scripts/bench_scale.py [--sizes 4096,8192,16384] [--steps 4] [--checkpoint PATH]

Each run is a fresh `gigagen slide` process; its peak resident memory is sampled every 20 ms over
the whole process tree (dask workers included) with psutil.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(cmd: list[str], out: Path) -> dict[str, float]:
    """Run cmd; return wall seconds, peak RSS of its process tree, peak and final bytes under out."""
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(popen.pid)
    peak = {"rss": 0, "disk": 0}
    stop = threading.Event()

    def sample() -> None:
        n = 0
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _tree_rss(proc))
            if n % 100 == 0 and out.exists():  # disk every 2 s: walking thousands of tile files is slow
                peak["disk"] = max(peak["disk"], _du(out))
            n += 1
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = popen.communicate()
    stop.set()
    thread.join()
    if popen.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{stderr}")
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak["rss"] / 2**20,
            "peak_disk_mb": max(peak["disk"], _du(out)) / 2**20, "final_disk_mb": _du(out) / 2**20, "stdout": stdout}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192,16384")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--workers-size", type=int, default=4096)
    args = ap.parse_args()
    gigagen = [sys.executable, "-m", "gigagen.cli", "slide"]
    common = ["--steps", str(args.steps), "--seed", "1", "--quiet", "--json"]
    if args.checkpoint:
        common += ["--checkpoint", args.checkpoint]
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            out = Path(tmp) / f"s{size}"
            r = measure([*gigagen, "--size", str(size), "--out", str(out), *common], out)
            store = json.loads((out / "run.json").read_text())["latent_store"]
            rows.append((f"{size}x{size}", "1 process", store, r))
            shutil.rmtree(out)
        for n in (1, 2):
            out = Path(tmp) / f"w{n}"
            r = measure([*gigagen, "--size", str(args.workers_size), "--out", str(out), "--workers", str(n), *common], out)
            rows.append((f"{args.workers_size}x{args.workers_size}", f"{n} dask worker{'s' if n > 1 else ''}", "disk", r))
            shutil.rmtree(out)
        plan = subprocess.run([*gigagen, "--size", "65536", "--out", str(Path(tmp) / "plan"), *common, "--plan"],
                              capture_output=True, text=True, check=True)
    print(f"{args.steps} steps per level, ome-tiff jpeg export included")
    print(f"{'slide':<13} {'run':<15} {'latents':<8} {'wall s':>8} {'peak RSS MB':>12} {'peak disk MB':>13} {'final disk MB':>14}")
    for size, how, store, r in rows:
        print(f"{size:<13} {how:<15} {store:<8} {r['wall_s']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['peak_disk_mb']:>13.0f} {r['final_disk_mb']:>14.0f}")
    p = json.loads(plan.stdout)
    d, s = p["disk_bytes"], p["seconds_on_this_machine"]
    print(f"65536x65536 --plan: disk <= {d['total'] / 1e9:.1f} GB, peak memory {p['peak_memory_bytes'] / 1e9:.2f} GB, "
          f"{p['network_evaluations']['unet_tiles']} UNet tile evaluations, about {s['total'] / 3600:.1f} h on this machine "
          f"({args.steps} steps)")


if __name__ == "__main__":
    main()
