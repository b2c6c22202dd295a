"""Parents drawn by the cascade itself, for the finest level to learn from (`gigagen train --sampled-parents`).

A cascade's finest level learns from real parents but samples from generated ones (exposure bias). The 5x level the
starting bundle draws from a layout it has not learnt by heart is smoother than a real 5x level (it loses nuclei
and fibres), and a 20x level that learnt to copy what its parent shows copies that smear. Sampled from the real
1.25x layout of the *training* part, the 5x level instead redraws the training 5x almost exactly (it has learnt it),
so its samples there do not show the smear. Here every training variant's layout is first redrawn SDEdit-style
(Meng et al. 2022: the real layout latent noised to a timestep t0 and denoised from there), which keeps the tissue
where the real image has it but makes the layout one the 5x level has not seen; the 5x level is then sampled from
pure noise given that layout, as `gigagen slide` samples it. The finest level also learns from those 5x samples
as parents, paired with the real 20x crops: to draw real 20x tissue from a parent that looks generated.

That pairing is loose: a 5x level drawn from noise puts its fibres and cell clusters elsewhere than the real 20x crop
has them, and the finest level trained on it drew a purple smear (model card, 2026-12-05 eleventh). With
`source="parent"` the 5x level itself is redrawn SDEdit-style instead, from its real latent noised to t0 and given the
real layout: at t0 300-500 the tissue stays where the 20x crop has it, while the 5x denoiser's own texture (swirls
where the real 5x level has single nuclei) replaces the real detail, so the pair differs only in what a generated
parent gets wrong.
Conditioning augmentation (Gaussian noise on the parent) did not do this (model card, 2026-12-02 seventh): noise
hides the parent's detail but does not look like the smear a generated parent has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gigagen.errors import UserError
from gigagen.models.checkpoint import bundle_identity, load_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.train.gan_decoder import read_cached_arrays, sample_finest, write_cached_arrays

SEED_OFFSET = 2_000_000  # sampled parents draw their noise from seeds apart from the decoder bank's
SOURCES = ("layout", "parent")  # what is redrawn from the real latent at t0: the layout (then 5x from noise), or the 5x level


def sample_parents(path: Path, latents: list[list[np.ndarray]], t0s: tuple[int, ...], device: torch.device,
                   log: Callable[[str], None], progress: bool, cache: Path | None = None,
                   source: str = "layout") -> list[list[np.ndarray]]:
    """For every variant (`latents[v][level]`, scaled as the denoiser sees them), one sample of level 1 per t0 in
    `t0s`, drawn by the bundle at `path`: with source "layout" from noise given that variant's level 2 redrawn from
    its real latent noised to t0 (`redraw_layout`), with source "parent" from the variant's real level 1 noised to t0
    given its real level 2. With `cache`, samples of the same bundle, source, timesteps and shapes are read back from
    there (a resumed run neither samples again nor builds the bundle's networks)."""
    from tqdm import tqdm

    if len(latents[0]) < 3:
        raise UserError("--sampled-parents needs a cascade of at least three levels (the 5x parent has a parent of its own)")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    identity = bundle_identity(path)
    key = f"{identity} {source} t0s={list(t0s)} shapes={[v[1].shape for v in latents]}"
    flat = read_cached_arrays(cache, key)
    if flat is None:
        bundle = load_bundle(path, device)
        c = bundle.config
        runner = BundleRunner(bundle, device, torch.bfloat16, c.guidance_per_level, c.autoguidance)
        flat = []
        with tqdm(total=len(latents) * len(t0s), desc="sampling parents", unit="level", disable=not progress) as bar:
            for v, levels in enumerate(latents):
                for j, t0 in enumerate(t0s):
                    seed = SEED_OFFSET + 2 * (v * len(t0s) + j)
                    if source == "layout":
                        flat.append(sample_finest(runner, redraw_layout(runner, levels, t0, seed), levels[1].shape[1:],
                                                  seed=seed + 1, level=1))
                    else:
                        flat.append(redraw(runner, levels, 1, t0, seed + 1))
                    bar.update(1)
        write_cached_arrays(cache, key, flat)
        what = "layouts redrawn" if source == "layout" else "each redrawn"
        log(f"sampled parents: {len(flat)} 5x levels from {identity}, {what} from t0 {list(t0s)}")
    else:
        log(f"sampled parents: {len(flat)} read from {cache}")
    n = len(t0s)
    return [flat[v * n : (v + 1) * n] for v in range(len(latents))]


def redraw_layout(runner: BundleRunner, levels: list[np.ndarray], t0: int, seed: int) -> np.ndarray:
    """Level 2 of one variant noised to t0 and denoised by the runner's network (given level 3 if there is one)."""
    return redraw(runner, levels, 2, t0, seed)


def redraw(runner: BundleRunner, levels: list[np.ndarray], level: int, t0: int, seed: int) -> np.ndarray:
    """`levels[level]` of one variant noised to t0 and denoised by the runner's network given the variant's real
    level above it (if there is one). The array is padded by mirroring to whole network divisors first (a training
    part's layout is a few latent pixels across, less than a tile) and cropped back; the conditioning clamps at the
    parent's edge, as it does on a slide's."""
    z = levels[level]
    d = runner.bundle.config.unet.divisor
    h, w = z.shape[1:]
    padded = np.pad(z, ((0, 0), (0, -h % d), (0, -w % d)), mode="symmetric")
    parent = levels[level + 1] if len(levels) > level + 1 else None
    return sample_finest(runner, parent, padded.shape[1:], seed=seed, start=(padded, t0), level=level)[:, :h, :w]
