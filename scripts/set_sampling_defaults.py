#!/usr/bin/env python
"""Write a copy of a model bundle with other sampling defaults; its weights stay bit for bit the same (stored in bf16
when the bundle's are, as the shipped default's are, so the copy is no larger).

The defaults `gigagen slide` takes from a bundle (guidance weights per level, DDIM steps per level,
autoguidance weight, sampling tile, conditioning noise) are measured per model after training (scripts/bench_sampling.py); this records
a measured choice without training again. The bundle's training record gains `sampling_defaults`: the
identity of the bundle it came from and the fields changed.

    .venv/bin/python scripts/set_sampling_defaults.py BUNDLE --out NEW.safetensors --guidance 1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.config import comma_floats, comma_ints, per_level  # noqa: E402
from gigagen.errors import UserError, script_exit  # noqa: E402
from gigagen.models.checkpoint import fresh_path, load_bundle, save_new  # noqa: E402


def changes(args: argparse.Namespace, n_levels: int) -> dict[str, Any]:
    """The BundleConfig fields to replace (one guidance weight means every refinement level, one step count
    every level)."""
    out: dict[str, Any] = {}
    if args.guidance is not None:
        out["guidance"] = per_level(args.guidance, n_levels - 1)
    if args.steps is not None:
        out["steps"] = per_level(args.steps, n_levels)
    for name in ("autoguidance", "sample_tile", "cond_aug"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the new bundle (must not exist)")
    p.add_argument("--guidance", type=comma_floats, default=None, help="CFG weight per refinement level, finest first (or one for all)")
    p.add_argument("--steps", type=comma_ints, default=None, help="DDIM steps per level, finest first with the layout level (or one for all)")
    p.add_argument("--autoguidance", type=float, default=None)
    p.add_argument("--sample-tile", type=int, default=None)
    p.add_argument("--cond-aug", type=int, default=None)
    args = p.parse_args()

    def body() -> str:
        out = fresh_path(args.out)
        bundle = load_bundle(Path(args.bundle))
        c = bundle.config
        new = changes(args, len(c.magnifications))
        if not new:
            raise UserError("nothing to change: give --guidance, --steps, --autoguidance, --sample-tile or --cond-aug")
        record = {"from": bundle.identity, "changed": {k: list(v) if isinstance(v, tuple) else v for k, v in new.items()}}
        cfg = dataclasses.replace(c, **new, training=c.training | {"sampling_defaults": record})
        save_new(out, bundle, cfg, compact=bundle.compact)  # a compact bundle stays compact: the same values, the same size
        return f"{out}: {load_bundle(out).identity} ({', '.join(f'{k} {v}' for k, v in record['changed'].items())})"

    return script_exit("set_sampling_defaults", body)


if __name__ == "__main__":
    sys.exit(main())
