#!/usr/bin/env python
"""Tiles per network call against wall time and peak memory: `gigagen slide --batch-size N` for each N
(the pixels never change with it), with the embedded default (or --checkpoint) model and its sampling tile.

    .venv/bin/python scripts/bench_batch.py [--size 4096] [--batches 1,2,4,16] [--seed 7] [--checkpoint B]

Prints wall seconds and the slide process's maximum resident set size per batch size. Run it on a quiet
machine: timings are wall clock.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and max RSS (bytes) of one child process, from its own rusage (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--batches", default="1,2,4,16")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    print(f"| --batch-size | {args.size}^2 wall s | max RSS GB |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batches.split(","):
            cmd = [sys.executable, "-m", "gigagen.cli", "slide", "--size", str(args.size), "--seed", str(args.seed), "--quiet",
                   "--batch-size", b, "--out", str(Path(tmp) / f"b{b}"), *ckpt]
            wall, rss = run(cmd)
            print(f"| {b} | {wall:.1f} | {rss / 1e9:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
