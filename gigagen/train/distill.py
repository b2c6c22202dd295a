"""Guidance distillation: one network pass per tile where the teacher bundle samples with two.

Meng et al. 2023 ("On distillation of guided diffusion models", its first stage): a student denoiser, started
from the teacher's own weights, learns to output what the teacher outputs *with* its default guidance, here
classifier-free guidance (the 5x level of the default: conditional and unconditional pass) and autoguidance
(the 20x level: main and guide network). `gigagen train --init-from B --distill` trains it on noised crops of
the training latents, the same x_t the teacher was trained on; the student bundle then samples with guidance
1 and no guide, so the 20x level costs one main-network pass per tile instead of a main and a guide pass, and
the 5x level one pass instead of two.

The teacher is a bundle file; the run keeps its path and identity (name and the file's sha256) in its state, so
a resumed run refuses a teacher file that changed under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gigagen.errors import UserError
from gigagen.models.checkpoint import ModelBundle, load_bundle
from gigagen.models.denoiser import BundleRunner


def distill_plan(bundle: ModelBundle, path: Path) -> dict[str, Any]:
    """What a --distill run of `bundle` learns, as the run's state keeps it: the teacher file, its identity and
    the guidance it samples with. UserError for a bundle with nothing to distil or one the student cannot replace."""
    c = bundle.config
    if c.autoguidance == 1.0 and all(w == 1.0 for w in c.guidance_per_level):
        raise UserError(f"--distill: {path} samples with one pass per tile already (guidance 1, autoguidance 1); nothing to distil")
    if bundle.coarse is not None:
        raise UserError(f"--distill: {path} samples its coarser levels with a coarse network, which a distilled main network cannot replace")
    if bundle.expert is not None:
        raise UserError(f"--distill: {path} samples its high-noise steps with an expert network; distil a bundle without one")
    if c.decoded_level is not None:
        raise UserError(f"--distill: {path} reads a level with a level decoder; distil a bundle that samples every level")
    return {"teacher": str(Path(path).resolve()), "identity": bundle.identity, "guidance": list(c.guidance_per_level),
            "autoguidance": c.autoguidance, "guide_levels": list(c.guide_levels)}


def distill_record(plan: dict[str, Any]) -> dict[str, Any]:
    """The training-record entry of a distilled bundle: what it samples like, in one pass."""
    return {"teacher": plan["identity"], "guidance": plan["guidance"], "autoguidance": plan["autoguidance"],
            "guide_levels": plan["guide_levels"]}


def teacher_runner(plan: dict[str, Any], device: torch.device) -> BundleRunner:
    """The teacher bundle of a distill plan, loaded and set to sample as it does by default (bf16, as inference);
    UserError when its file is gone or is no longer the bundle the run started from."""
    path = Path(plan["teacher"])
    bundle = load_bundle(path, device) if path.is_file() else None
    if bundle is None or bundle.identity != plan["identity"]:
        raise UserError(f"--distill: the teacher {path} is missing or changed since the run started (was {plan['identity']})")
    return BundleRunner(bundle, device, torch.bfloat16, guidance=tuple(plan["guidance"]), autoguidance=float(plan["autoguidance"]))


@torch.no_grad()
def teacher_target(runner: BundleRunner, xt: torch.Tensor, t: torch.Tensor, level: int, cond: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """The teacher's guided output for each crop: conditional (with its guidance) where the crop keeps its parent
    (mask 1), unconditional where the parent is dropped or there is none (the layout level), so the student's
    unconditional mode stays the teacher's."""
    out = torch.empty(xt.shape, dtype=torch.float32, device=xt.device)
    keep = mask > 0.5
    if keep.any():
        out[keep] = runner.guided(xt[keep], t[keep], level, cond[keep])
    if not keep.all():
        out[~keep] = runner.guided(xt[~keep], t[~keep], level, None)
    return out
