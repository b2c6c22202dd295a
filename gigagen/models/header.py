"""A bundle file's constants and its configuration as plain JSON, without torch: what `gigagen --help` may read
(importing torch costs about a second; models.checkpoint builds the typed BundleConfig from the same header)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

META_KEY = "gigagen.bundle"  # the safetensors metadata entry that holds the BundleConfig as JSON
DEFAULT_STEPS = 20  # DDIM steps per level when neither the run nor the bundle names them
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"


def bundle_metadata(path: Path) -> dict[str, Any]:
    """The configuration stored in a bundle file's safetensors header (an 8-byte little-endian length, then a JSON
    object whose "__metadata__" maps META_KEY to the configuration's JSON). OSError, ValueError, KeyError or
    struct.error when the file is missing or not a bundle."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return json.loads(header["__metadata__"][META_KEY])
