#!/usr/bin/env python
"""A guidance-distilled bundle against its teacher: time, memory and quality of the same slides.

For each seed it runs `gigagen slide --size N --seed S` (all exports, as the README's first command) with the
teacher, the student and, as the control of the same cost, the teacher without its guidance (`--guidance 1
--autoguidance 1`: one pass per tile, as the student), in turn, rotating which goes first so a drift in this
machine's speed falls on all,
then `gigagen evaluate` on each against the held-out band of the reference region, and compares the two slides
of a seed directly: the PSNR of their overviews (the pyramid level at most 1024 px a side), which is high when
the student draws the teacher's slide and falls as their samples part (the teacher's slides of two seeds give
the floor).

    .venv/bin/python scripts/bench_distill.py --student runs/distill/bundle.safetensors
        [--teacher gigagen/weights/default.safetensors] [--seeds 7,11,13,17] [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gigagen.io.omezarr import open_slide

from _slide_eval import GIGAGEN, ROOT, ROW_HEADER, row_cells


def timed_slide(out: Path, size: int, seed: int, ckpt: str, extra: list[str]) -> tuple[float, float, dict[str, float]]:
    """Wall seconds and peak RSS (GB) of one `gigagen slide` process, and the stage times of its run.json."""
    cmd = GIGAGEN + ["slide", "--size", str(size), "--seed", str(seed), "--quiet", "--out", str(out), "--checkpoint", ckpt, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KB on Linux)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"gigagen slide failed for {ckpt} seed {seed}")
    return wall, usage.ru_maxrss / 1e6, json.loads((out / "run.json").read_text())["timings_s"]


def evaluated(out: Path, reference: str, ckpt: str) -> dict:
    js = out.parent / (out.name + ".json")
    subprocess.run(GIGAGEN + ["evaluate", str(out), "--reference", reference, "--json", str(js), "--checkpoint", ckpt],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(js.read_text())["rows"]["generated"]


def overview(out: Path, max_side: int = 1024) -> np.ndarray:
    reader = open_slide(out)
    lvl = next((k for k, (h, w) in enumerate(reader.level_shapes) if max(h, w) <= max_side), len(reader.level_shapes) - 1)
    h, w = reader.level_shapes[lvl]
    return reader.read_region(lvl, 0, 0, w, h).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="the distilled bundle (gigagen train --init-from T --distill)")
    p.add_argument("--teacher", default=str(ROOT / "gigagen" / "weights" / "default.safetensors"))
    p.add_argument("--seeds", default="7,11,13,17")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--reference", default=str(ROOT / "data" / "cmu_small_region.svs"))
    p.add_argument("--keep", default=None, help="write the slides here (a new directory) instead of a temporary one")
    args = p.parse_args()
    if args.keep and Path(args.keep).exists():
        print(f"bench_distill.py: {args.keep} exists; give a new directory", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_distill_"))
    work.mkdir(parents=True, exist_ok=True)
    unguided = ["--guidance", "1", "--autoguidance", "1"]
    models = {"teacher": (args.teacher, []), "student": (args.student, []), "unguided": (args.teacher, unguided)}
    print(f"| model | seed | wall s | max RSS GB | 20x s | 5x s | decode s | {ROW_HEADER} |")
    print("|" + "---|" * 15)
    walls: dict[str, list[float]] = {name: [] for name in models}
    pairs, controls = [], []
    names = list(models)
    seeds = [int(s) for s in args.seeds.split(",")]
    for i, seed in enumerate(seeds):
        for name in names[i % 3 :] + names[: i % 3]:
            out = work / f"{name}_s{seed}"
            ckpt, extra = models[name]
            wall, rss, st = timed_slide(out, args.size, seed, ckpt, extra)
            walls[name].append(wall)
            row = evaluated(out, args.reference, ckpt)
            print(f"| {name} | {seed} | {wall:.1f} | {rss:.2f} | {st.get('level0_20x', 0):.1f} | {st.get('level1_5x', 0):.1f} | "
                  f"{st.get('decode', 0):.1f} | {row_cells(row)} |", flush=True)
        pairs.append(psnr(overview(work / f"teacher_s{seed}"), overview(work / f"student_s{seed}")))
        controls.append(psnr(overview(work / f"teacher_s{seed}"), overview(work / f"unguided_s{seed}")))
    ratios = [s / t for s, t in zip(walls["student"], walls["teacher"])]
    print(f"\nwall s, median: {', '.join(f'{name} {np.median(w):.1f}' for name, w in walls.items())}; "
          f"student / teacher per seed: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"overview PSNR to the teacher's slide per seed (dB): student {', '.join(f'{v:.1f}' for v in pairs)}; "
          f"unguided {', '.join(f'{v:.1f}' for v in controls)}")
    if len(seeds) > 1:  # the floor: two unrelated slides of the teacher
        apart = [psnr(overview(work / f"teacher_s{a}"), overview(work / f"teacher_s{b}")) for a, b in zip(seeds, seeds[1:])]
        print(f"overview PSNR teacher vs teacher at the next seed (unrelated slides, dB): {', '.join(f'{v:.1f}' for v in apart)}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
