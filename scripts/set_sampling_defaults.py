#!/usr/bin/env python
"""Write a copy of a model bundle with other sampling defaults; its weights stay bit for bit the same (stored in bf16
when the bundle's are, as the shipped default's are, so the copy is no larger).

The defaults `gigagen slide` takes from a bundle (guidance weights per level, DDIM steps per level,
autoguidance weight, sampling tile, conditioning noise, and for a bundle with an exemplar whether its layout level is
sampled or made of fragments of the exemplar) are measured per model after training (scripts/bench_sampling.py); this
records a measured choice without training again. The bundle's training record gains `sampling_defaults`: the
identity of the bundle it came from and the fields changed.

    .venv/bin/python scripts/set_sampling_defaults.py BUNDLE --out NEW.safetensors --guidance 1,2
    .venv/bin/python scripts/set_sampling_defaults.py BUNDLE --out NEW.safetensors --layout fragments   # engine.layout
    .venv/bin/python scripts/set_sampling_defaults.py BUNDLE --out NEW.safetensors --layout cell=128,presence=0.9
    .venv/bin/python scripts/set_sampling_defaults.py BUNDLE --out NEW.safetensors --layout sampled
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gigagen.config import LAYOUTS, comma_floats, comma_ints, per_level  # noqa: E402
from gigagen.engine.layout import LayoutSpec, named_layout  # noqa: E402
from gigagen.errors import UserError, script_exit  # noqa: E402
from gigagen.models.checkpoint import fresh_path, load_bundle, save_new, validate_config  # noqa: E402


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
    if args.layout is not None:
        out["layout"] = layout_spec(args.layout)
    return out


def layout_spec(text: str) -> LayoutSpec | None:
    """--layout: "sampled" (None), "fragments" (LayoutSpec's defaults) or KEY=VALUE,... of LayoutSpec's fields."""
    if text in LAYOUTS:
        return named_layout(text)
    kinds = {f.name: type(f.default) for f in dataclasses.fields(LayoutSpec)}  # int or float, as the defaults are
    kv: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in kinds or not value:
            raise UserError(f"--layout: {part!r} is not {' or '.join(LAYOUTS)}, or KEY=VALUE with KEY one of {', '.join(kinds)}")
        try:
            kv[key] = kinds[key](value)
        except ValueError:
            raise UserError(f"--layout: {key} must be {'a whole number' if kinds[key] is int else 'a number'}, not {value!r}") from None
    return LayoutSpec(**kv)


def _plain(v: Any) -> Any:
    """A changed field as the training record stores it (JSON)."""
    if isinstance(v, tuple):
        return list(v)
    return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the new bundle (must not exist)")
    p.add_argument("--guidance", type=comma_floats, default=None, help="CFG weight per refinement level, finest first (or one for all)")
    p.add_argument("--steps", type=comma_ints, default=None, help="DDIM steps per level, finest first with the layout level (or one for all)")
    p.add_argument("--autoguidance", type=float, default=None)
    p.add_argument("--sample-tile", type=int, default=None)
    p.add_argument("--cond-aug", type=int, default=None)
    p.add_argument("--layout", default=None, help="the layout level: sampled, fragments (of the exemplar, engine.layout) "
                                                  "or fragments with KEY=VALUE,... of LayoutSpec")
    args = p.parse_args()

    def body() -> str:
        out = fresh_path(args.out)
        bundle = load_bundle(Path(args.bundle))
        c = bundle.config
        new = changes(args, len(c.magnifications))
        if not new:
            raise UserError("nothing to change: give --guidance, --steps, --autoguidance, --sample-tile, --cond-aug or --layout")
        record = {"from": bundle.identity, "changed": {k: _plain(v) for k, v in new.items()}}
        cfg = dataclasses.replace(c, **new, training=c.training | {"sampling_defaults": record})
        try:
            validate_config(cfg)
        except ValueError as exc:
            raise UserError(f"{args.bundle}: {exc}") from None
        save_new(out, bundle, cfg, compact=bundle.compact)  # a compact bundle stays compact: the same values, the same size
        return f"{out}: {load_bundle(out).identity} ({', '.join(f'{k} {v}' for k, v in record['changed'].items())})"

    return script_exit("set_sampling_defaults", body)


if __name__ == "__main__":
    sys.exit(main())
