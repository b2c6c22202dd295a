"""Shared by the benchmark scripts: one `gigagen slide` run (timed) and its `gigagen evaluate` row."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GIGAGEN = [sys.executable, "-m", "gigagen.cli"]


def slide_and_evaluate(out: Path, size: int, seed: int, reference: str, ckpt: list[str], extra: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of `gigagen slide` (no exports) and the 'generated' row of its evaluation."""
    t0 = time.perf_counter()
    subprocess.run(GIGAGEN + ["slide", "--size", str(size), "--seed", str(seed), "--formats", "none", "--quiet",
                              "--out", str(out)] + extra + ckpt, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    js = out.with_suffix(".json")
    subprocess.run(GIGAGEN + ["evaluate", str(out), "--reference", reference, "--json", str(js)] + ckpt,
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return wall, json.loads(js.read_text())["rows"]["generated"]


def real_parent_fd(ckpt: list[str], extra: list[str]) -> tuple[float, float]:
    """FD randconv of the real-parent sample against its real band (own tiles, paired tiles), as
    scripts/sample_real_parent.py prints them; `extra` are its options (--seed, --tile, --autoguidance)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample_real_parent.py"), *extra, *ckpt],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout
    m = re.search(r"FD randconv to the same real band ([0-9.]+), at the real tissue positions \(\d+ tiles\) ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"sample_real_parent.py printed no FD: {out[-300:]}")
    return float(m.group(1)), float(m.group(2))


ROW_HEADER = "W1 H | W1 E | nuclei/mm2 | area med um2 | W1 area | HF energy | FD randconv | NN-train NCC max"


def row_cells(g: dict[str, Any]) -> str:
    """The evaluation's columns of ROW_HEADER, as markdown cells."""
    return (f"{g['W1_H']:.4f} | {g['W1_E']:.4f} | {g['nuclei_per_mm2']:.0f} | {g['nucleus_area_median_um2']:.1f} | "
            f"{g['W1_nucleus_area_um2']:.2f} | {g['hf_energy']:.4f} | {g['FD_randconv']:.3f} | {g['nn_train_ncc_max']:.3f}")


def timed_slide(out: Path, size: int, seed: int, ckpt: str, extra: list[str]) -> tuple[float, float, dict[str, float]]:
    """Wall seconds and peak RSS (GB) of one `gigagen slide` process with all exports (the README's command),
    and the stage times of its run.json."""
    cmd = GIGAGEN + ["slide", "--size", str(size), "--seed", str(seed), "--quiet", "--out", str(out), "--checkpoint", ckpt, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KB on Linux)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"gigagen slide failed for {ckpt} seed {seed}")
    return wall, usage.ru_maxrss / 1e6, json.loads((out / "run.json").read_text())["timings_s"]


def evaluated(out: Path, reference: str, ckpt: str) -> dict[str, Any]:
    """The 'generated' row of `gigagen evaluate OUT` against the reference's held-out band."""
    js = out.parent / (out.name + ".json")
    subprocess.run(GIGAGEN + ["evaluate", str(out), "--reference", reference, "--json", str(js), "--checkpoint", ckpt],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(js.read_text())["rows"]["generated"]


def overview(out: Path, max_side: int = 1024) -> np.ndarray:
    """The slide's largest pyramid level at most max_side pixels a side, as uint8 RGB."""
    from gigagen.io.omezarr import open_slide

    reader = open_slide(out)
    lvl = next((k for k, (h, w) in enumerate(reader.level_shapes) if max(h, w) <= max_side), len(reader.level_shapes) - 1)
    h, w = reader.level_shapes[lvl]
    return reader.read_region(lvl, 0, 0, w, h)


def overviews(work: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The overview of each slide directory work/NAME, read once for all the comparisons a benchmark makes."""
    return {name: overview(work / name) for name in names}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(err, 1e-12)))


STAGES_HEADER = "wall s | max RSS GB | 20x s | 5x s | decode s"


def stage_cells(wall: float, rss: float, st: dict[str, float]) -> str:
    """timed_slide's figures as the markdown cells of STAGES_HEADER."""
    return f"{wall:.1f} | {rss:.2f} | {st.get('level0_20x', 0):.1f} | {st.get('level1_5x', 0):.1f} | {st.get('decode', 0):.1f}"


def rotate_slides(models: list[tuple[str, str, list[str]]], seeds: list[int], size: int, reference: str,
                  work: Path) -> tuple[dict[str, list[float]], dict[str, list[dict[str, Any]]]]:
    """For each seed, the README's command (timed_slide) with every (name, bundle, slide options) in `models` in turn,
    rotating which goes first so a drift in this machine's speed falls on all, into work/NAME_sSEED, then its evaluation;
    prints a markdown row each (after a header). Returns per name the wall seconds and the evaluation rows, seed order."""
    print(f"| model | seed | {STAGES_HEADER} | {ROW_HEADER} |")
    print("|" + "---|" * (2 + STAGES_HEADER.count("|") + 1 + ROW_HEADER.count("|") + 1))
    walls: dict[str, list[float]] = {m[0]: [] for m in models}
    rows: dict[str, list[dict[str, Any]]] = {m[0]: [] for m in models}
    for i, seed in enumerate(seeds):
        k = i % len(models)
        for name, bundle, extra in models[k:] + models[:k]:
            out = work / f"{name}_s{seed}"
            wall, rss, st = timed_slide(out, size, seed, bundle, extra)
            row = evaluated(out, reference, bundle)
            walls[name].append(wall)
            rows[name].append(row)
            print(f"| {name} | {seed} | {stage_cells(wall, rss, st)} | {row_cells(row)} |", flush=True)
    return walls, rows
