"""Shared fixtures: a tiny model bundle so engine and CLI tests run in seconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.models.checkpoint import BundleConfig, save_bundle
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig, Decoder

torch.set_num_threads(2)


def tiny_config(**overrides) -> BundleConfig:
    ae = AutoencoderConfig(base_ch=8, ch_mult=(1, 2, 2), latent_ch=4)
    unet = UNetConfig(latent_ch=4, base_ch=16, ch_mult=(1, 2), n_levels=3)
    base = dict(name="tiny-test", ae=ae, unet=unet, tile=8, trained=True)
    return BundleConfig(**(base | overrides))


def make_bundle(path: Path, seed: int = 0, **overrides) -> Path:
    """Random tiny bundle with a non-zero output layer, so samples depend on every input."""
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    unet = UNet(cfg.unet)
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    level_decoder = Decoder(cfg.ae, cfg.level_decoder_noise) if cfg.decoded_level is not None else None  # random, unlike the autoencoder's
    save_bundle(path, cfg, Autoencoder(cfg.ae), unet, level_decoder=level_decoder)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make_guided_bundle(path: Path, seed: int = 0, autoguidance: float = 2.0, guide_levels: tuple[int, ...] = (0, 1)) -> Path:
    """The tiny bundle of `make_bundle(seed)` plus a smaller random guide network (autoguidance) for
    the 20x and 5x levels (not the layout level)."""
    torch.manual_seed(seed)
    guide_cfg = UNetConfig(latent_ch=4, base_ch=8, ch_mult=(1, 2), n_levels=3)
    cfg = tiny_config(guide=guide_cfg, autoguidance=autoguidance, guide_levels=guide_levels)
    unet = UNet(cfg.unet)
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    ae = Autoencoder(cfg.ae)
    guide = UNet(guide_cfg)
    torch.nn.init.normal_(guide.out.weight, std=0.05)
    save_bundle(path, cfg, ae, unet, guide)
    return path


@pytest.fixture(scope="session")
def guided_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_guided_bundle(tmp_path_factory.mktemp("model") / "guided.safetensors")


def one_step_x0(path: Path, t: int, level: int) -> np.ndarray:
    """The x0 a bundle's runner predicts at timestep t and level from fixed random inputs (2 tiny tiles; a parent
    below the layout level): which network samples that step shows in it."""
    from gigagen.models.checkpoint import load_bundle
    from gigagen.models.denoiser import BundleRunner

    runner = BundleRunner(load_bundle(path), torch.device("cpu"), torch.bfloat16)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    cond = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) if level < 2 else None
    return runner.model_fn(x, t, level, cond)[0]


def tiny_slide(bundle: Path, out: Path) -> tuple[list[str], np.ndarray]:
    """A 256^2 slide of seed 4 in 3 steps without exports: run.json's `made_by` per level, and its finest pixels."""
    from gigagen.cli import main
    from gigagen.io.omezarr import open_slide

    args = ["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", "--size", "256",
            "--seed", "4", "--out", str(out)]
    assert main(args) == 0
    made = [lv["made_by"] for lv in json.loads((out / "run.json").read_text())["levels"]]
    r = open_slide(out)
    return made, r.read_region(0, 0, 0, r.width, r.height)
