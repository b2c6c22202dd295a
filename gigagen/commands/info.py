"""`gigagen info`: size, pyramid levels, pixel size, storage, provenance and run configuration of a slide."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gigagen.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a generated slide", description=__doc__)
    p.add_argument("slide", help="slide directory (or its slide.ome.zarr)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of slide_info()."""
    meta = info["gigagen"]
    lines = [
        f"slide      {info['path']}",
        f"size       {info['width']} x {info['height']} px, {info['mpp']} um/px "
        f"({info['magnification']:g}x), {info['width'] * info['mpp'] / 1000:.2f} x "
        f"{info['height'] * info['mpp'] / 1000:.2f} mm",
        f"synthetic  {'yes' if info['synthetic'] else 'NO'} (generator {meta.get('generator')} "
        f"{meta.get('version')}, seed {meta.get('seed')}, model {meta.get('model')})",
        f"status     {info['status']}",
        f"zarr       chunks {info['zarr']['chunks']}, compressor {info['zarr']['compressor']}",
        "levels     " + ", ".join(f"{lv['level']}: {lv['width']}x{lv['height']} @ {lv['mpp']:g} um"
                                  for lv in info["levels"]),
    ]
    for name, ex in info["exports"].items():
        if name == "dzi":  # a Deep Zoom pack: JPEG tiles in a zip, no TIFF tags
            lines.append(f"{name:<10} {ex['path']}: {_human_bytes(ex['bytes'])}, {ex['tiles']} JPEG tiles of {ex['tile']} px, "
                         f"quality {ex['quality']}")
            continue
        lines.append(f"{name:<10} {ex['path']}: {_human_bytes(ex['bytes'])}, {ex['compression']} "
                     f"({ex['photometric']}), {len(ex['levels'])} levels, tile {ex['tile']}")
    if info["run"] is not None:
        cfg = info["run"].get("config", info["run"])
        lines.append("run        " + json.dumps(cfg, sort_keys=True, default=str))
    else:
        lines.append("run        (no run.json)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from gigagen.io.export import slide_info

    if not Path(args.slide).exists():
        raise UserError(f"{args.slide} does not exist")
    info = slide_info(Path(args.slide))
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0
