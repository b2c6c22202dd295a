"""Shared by the benchmark scripts: one `gigagen slide` run (timed) and its `gigagen evaluate` row."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
