"""scripts/set_denoiser.py: a bundle's main denoiser replaced by a continued run's, everything else kept."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import torch

from gigagen.models.checkpoint import load_bundle, save_bundle, save_like
from gigagen.models.unet import UNet, UNetConfig

from conftest import make_bundle

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "set_denoiser.py"


def _script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_runs_denoiser_replaces_the_bundles_and_nothing_else_changes(tmp_path: Path) -> None:
    base = load_bundle(make_bundle(tmp_path / "base.safetensors"))
    # the bundle: its decoder fine-tuned (the encoder kept), as after gigagen train --decoder-of
    ae = copy.deepcopy(base.ae)
    with torch.no_grad():
        next(ae.decoder.parameters()).add_(0.5)
    bundle = tmp_path / "bundle.safetensors"
    save_bundle(bundle, dataclasses.replace(base.config, training={"unet_step": 4, "decoder_gan": {"minutes": 1}}), ae, base.unet)
    # the run: the same network on the same latents, trained on (other weights, its own record)
    torch.manual_seed(5)
    later = UNet(base.config.unet)
    run = tmp_path / "run.safetensors"
    save_bundle(run, dataclasses.replace(base.config, training={"unet_step": 9, "validation": {"best_held_v_loss": 0.2}}),
                base.ae, later)
    done = _script(bundle, "--from", run, "--out", tmp_path / "new.safetensors")
    assert done.returncode == 0, done.stderr
    new = load_bundle(tmp_path / "new.safetensors")
    assert _same(new.unet, later) and not _same(new.unet, base.unet)
    assert _same(new.ae, ae) and not _same(new.ae.decoder, base.ae.decoder)  # the fine-tuned decoder is kept
    t = new.config.training
    assert t["unet_step"] == 9 and t["validation"]["best_held_v_loss"] == 0.2 and t["decoder_gan"] == {"minutes": 1}
    assert t["denoiser_set_from"] == load_bundle(run).identity
    assert dataclasses.replace(new.config, training={}) == dataclasses.replace(base.config, training={})


def test_set_denoiser_refusals_are_one_line_and_keep_existing_files(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle.safetensors")
    other_net = make_bundle(tmp_path / "small.safetensors", unet=UNetConfig(latent_ch=4, base_ch=8, ch_mult=(1, 2), n_levels=3))
    other_latents = make_bundle(tmp_path / "seed1.safetensors", seed=1)  # same network, another autoencoder
    for run, said in ((other_net, "another network"), (other_latents, "latents")):
        done = _script(bundle, "--from", run, "--out", tmp_path / "x.safetensors")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
        assert not (tmp_path / "x.safetensors").exists()
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes(b"user data")
    done = _script(bundle, "--from", bundle, "--out", kept)
    assert done.returncode == 2 and "exists" in done.stderr and kept.read_bytes() == b"user data"


def test_a_compact_bundle_takes_a_denoiser_trained_from_its_full_precision_weights(tmp_path: Path) -> None:
    """The shipped default is stored compact (bf16 convolution weights); a run continued from the fp32 bundle it was
    made of has the same latents, and the check says so; a changed encoder is still refused."""
    full = make_bundle(tmp_path / "full.safetensors")
    b = load_bundle(full)
    compact = tmp_path / "compact.safetensors"
    save_like(compact, b, b.config, compact=True)
    done = _script(compact, "--from", full, "--out", tmp_path / "new.safetensors")
    assert done.returncode == 0, done.stderr
    assert _same(load_bundle(tmp_path / "new.safetensors").unet, b.unet)
    with torch.no_grad():
        next(b.ae.encoder.parameters()).mul_(1.01)
    save_bundle(tmp_path / "changed.safetensors", b.config, b.ae, b.unet)
    done = _script(compact, "--from", tmp_path / "changed.safetensors", "--out", tmp_path / "x.safetensors")
    assert done.returncode == 2 and "latents" in done.stderr and not (tmp_path / "x.safetensors").exists()
