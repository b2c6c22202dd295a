"""The resumable state of one `gigagen slide` run, kept in SLIDE/.gigagen-state/ until it finishes.

progress.json records the run's fingerprint (every setting that changes a pixel, and the model),
where latents live ("memory" checkpoints or per-tile "disk" files), and which stages are complete.
A resumed run must present the same fingerprint: a partial slide is never mixed with other
arguments or another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gigagen.config import RunConfig
from gigagen.engine.store import get_bytes, put_bytes
from gigagen.errors import UserError

STATE_DIR = ".gigagen-state"
# settings that do not change any output byte, so a resume may change them
FREE_FIELDS = ("out", "overwrite", "batch_size", "tile_order", "resume", "memory_budget", "scheduler", "workers", "state_store", "device")


def fingerprint(cfg: RunConfig, model_identity: str, precision: str, device_type: str) -> dict[str, Any]:
    fp = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.as_dict().items() if k not in FREE_FIELDS}  # as JSON reads back
    return fp | {"model": model_identity, "precision": precision, "device_type": device_type}


@dataclass
class RunState:
    root: str  # local path or fsspec URL of the latent state
    fingerprint: dict[str, Any]
    store_kind: str  # "memory" or "disk"
    stages: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"{self.root.rstrip('/')}/progress.json"

    def save(self) -> None:
        data = {"fingerprint": self.fingerprint, "store": self.store_kind, "stages": self.stages}
        put_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str) -> None:
        if stage not in self.stages:
            self.stages.append(stage)
            self.save()


def load_state(root: str, expected: dict[str, Any]) -> RunState:
    """Read a partial run's state; UserError if it is missing, corrupt or from other settings or model."""
    data = get_bytes(f"{root.rstrip('/')}/progress.json")
    if data is None:
        raise UserError(f"nothing to resume: no saved state at {root}")
    try:
        d = json.loads(data)
        state = RunState(root, d["fingerprint"], d["store"], list(d["stages"]))
        if state.store_kind not in ("memory", "disk"):
            raise ValueError(state.store_kind)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"the saved state at {root} is corrupt; start again with --overwrite") from None
    if state.fingerprint != expected:
        diff = sorted(k for k in set(expected) | set(state.fingerprint) if expected.get(k) != state.fingerprint.get(k))
        raise UserError(
            f"the partial slide was started with different {', '.join(diff)}; resume with the same arguments and model, or start again with --overwrite"
        )
    return state


def default_state_root(out: Path) -> str:
    return str(out / STATE_DIR)
