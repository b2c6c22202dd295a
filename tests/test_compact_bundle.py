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


def test_set_sampling_defaults_keeps_a_compact_bundle_compact(tmp_path: Path) -> None:
    """A copy with other sampling defaults stores its weights as the source does: the shipped default is compact and
    under the repository's file-size limit, and a copy written in fp32 would be twice its size, not the same file but
    for its defaults. Each tensor keeps its stored dtype and bits; a full bundle stays full."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).resolve().parents[1] / "scripts" / "set_sampling_defaults.py"
    full = make_bundle(tmp_path / "full.safetensors")
    small = tmp_path / "small.safetensors"
    save_like(small, load_bundle(full), load_bundle(full).config, compact=True)
    assert load_bundle(small).compact and not load_bundle(full).compact
    for src in (small, full):
        out = tmp_path / f"{src.stem}_steps.safetensors"
        r = subprocess.run([sys.executable, str(script), str(src), "--out", str(out), "--steps", "7"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        a, b = load_file(str(src)), load_file(str(out))
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        assert abs(out.stat().st_size - src.stat().st_size) < 4096  # the same tensors; only the header differs
