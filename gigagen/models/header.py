"""A bundle file's constants and its configuration as plain JSON, without torch: what `gigagen --help` may read
(importing torch costs about a second; models.checkpoint builds the typed BundleConfig from the same header)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Sequence

META_KEY = "gigagen.bundle"  # the safetensors metadata entry that holds the BundleConfig as JSON
DEFAULT_STEPS = 20  # DDIM steps per level when neither the run nor the bundle names them
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the header's length


def steps_per_level(steps: Sequence[int], n_levels: int) -> tuple[int, ...]:
    """A bundle's default DDIM steps of every level, finest first, the layout level included (its `steps`, or
    DEFAULT_STEPS at every level when it names none)."""
    return tuple(steps) or (DEFAULT_STEPS,) * n_levels


def guidance_per_level(guidance: Sequence[float], n_levels: int) -> tuple[float, ...]:
    """A bundle's default guidance weight of every refinement level, finest first (its `guidance`, or 1 at every
    level when it names none; the layout level has no parent to guide with)."""
    return tuple(guidance) or (1.0,) * (n_levels - 1)


def bundle_metadata(path: Path) -> dict[str, Any]:
    """The configuration stored in a bundle file's safetensors header (an 8-byte little-endian length, then a JSON
    object whose "__metadata__" maps META_KEY to the configuration's JSON). OSError when the file cannot be read;
    ValueError or KeyError when it is not a bundle: any other file, e.g. a Git LFS pointer left in place of the
    weights, whose first 8 bytes read as a length of exabytes."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or (n := struct.unpack("<Q", head)[0]) > MAX_HEADER_BYTES:
            raise ValueError(f"{path} does not start with a safetensors header")
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"][META_KEY])
