"""Compact bundles (save_bundle compact=True): convolution and linear weights in bf16, half the file, and the same
bf16-autocast outputs as the fp32 file, since autocast rounds those weights to bf16 before every use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from conftest import make_bundle
from gigagen.models.checkpoint import load_bundle, save_like
from gigagen.models.denoiser import BundleRunner


def test_a_compact_bundle_is_smaller_and_samples_the_same_bits(tmp_path: Path) -> None:
    full = make_bundle(tmp_path / "full.safetensors")
    b = load_bundle(full)
    small = tmp_path / "small.safetensors"
    save_like(small, b, b.config, compact=True)
    assert small.stat().st_size < 0.7 * full.stat().st_size
    with safe_open(str(small), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["unet.out.weight"] == "BF16" and "BF16" in {v for k, v in dtypes.items() if k.startswith("ae.decoder")}
    assert all(v == "F32" for k, v in dtypes.items() if k.endswith("level_emb.weight"))  # embeddings: not autocast
    c = load_bundle(small)
    assert next(c.unet.parameters()).dtype == torch.float32  # loaded back into fp32 modules
    rng = np.random.default_rng(0)
    cfg = b.config
    x = rng.standard_normal((2, cfg.level_channels[0], 16, 16)).astype(np.float32)
    cond = rng.standard_normal((2, cfg.unet.cond_ch, 16, 16)).astype(np.float32) if cfg.unet.cond_ch else None
    z = rng.standard_normal((1, cfg.ae.latent_ch, 8, 8)).astype(np.float32)
    ra, rc = (BundleRunner(m, torch.device("cpu"), torch.bfloat16) for m in (b, c))
    for level in (0, 1):
        for u, v in zip(ra.model_fn(x, 500, level, cond), rc.model_fn(x, 500, level, cond)):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(ra.decode_fn(z), rc.decode_fn(z))
    # in fp32 the rounded weights are a slightly different network
    fa, fc = (BundleRunner(m, torch.device("cpu"), torch.float32) for m in (b, c))
    assert not np.array_equal(fa.decode_fn(z), fc.decode_fn(z))
