"""Shared by the benchmark scripts: one `gigagen slide` run (timed) and its `gigagen evaluate` row."""

from __future__ import annotations

import json
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
