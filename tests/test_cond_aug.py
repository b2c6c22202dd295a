"""Conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models"): the denoiser learns from
parent levels noised to a timestep it is told, and `gigagen slide` noises each generated parent to one
fixed timestep (the bundle's `cond_aug`, or --cond-aug), so that the errors of a generated parent read
as noise rather than as structure to copy. The noise is a function of (seed, level, position)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.engine.grid import Tile, Tiling
from gigagen.engine.store import LevelSpec
from gigagen.engine.tiler import _conditioning
from gigagen.models.checkpoint import read_bundle_config, save_bundle
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder
from gigagen.train import loop as L

from conftest import make_bundle, tiny_config
from test_sample_tile import _pixels, _slide
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name


def cond_aug_bundle(path: Path, cond_aug: int = 300, seed: int = 3) -> Path:
    """A tiny random bundle whose denoiser takes the parent's noise timestep, with a non-zero embedding of it."""
    torch.manual_seed(seed)
    cfg = tiny_config(unet=dataclasses.replace(tiny_config().unet, cond_aug=True), cond_aug=cond_aug)
    unet = UNet(cfg.unet)
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    torch.nn.init.normal_(unet.cond_aug_emb.weight, std=0.5)
    save_bundle(path, cfg, Autoencoder(cfg.ae), unet)
    return path


def _inputs(b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 4, 8, 8, generator=g)
    return x, torch.full((b,), 500.0), torch.zeros(b, dtype=torch.long), cond, torch.ones(b)


@torch.no_grad()
def test_the_noise_embedding_starts_at_zero_and_then_tells_the_network_the_timestep() -> None:
    cfg = tiny_config().unet
    torch.manual_seed(0)
    plain = UNet(cfg).eval()
    torch.nn.init.normal_(plain.out.weight, std=0.05)
    aug = UNet(dataclasses.replace(cfg, cond_aug=True)).eval()
    missing, unexpected = aug.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["cond_aug_emb.bias", "cond_aug_emb.weight"] and not unexpected
    x, t, lv, cond, mask = _inputs()
    # continued from a network without it (gigagen train --init-from ... --cond-aug-max): unchanged at first
    torch.testing.assert_close(aug(x, t, lv, cond, mask, torch.full((2,), 300.0)), plain(x, t, lv, cond, mask), rtol=0, atol=0)
    torch.nn.init.normal_(aug.cond_aug_emb.weight, std=0.5)
    assert not torch.allclose(aug(x, t, lv, cond, mask, torch.full((2,), 300.0)), aug(x, t, lv, cond, mask, torch.zeros(2)))
    torch.testing.assert_close(aug(x, t, lv, cond, mask, None), aug(x, t, lv, cond, mask, torch.zeros(2)))  # None = clean
    plain(x, t, lv, cond, mask, torch.zeros(2))  # a network without it takes "clean" ...
    with pytest.raises(ValueError, match="conditioning augmentation"):
        plain(x, t, lv, cond, mask, torch.full((2,), 300.0))  # ... and refuses a noised parent


def test_conditioning_noise_is_a_function_of_seed_level_and_position() -> None:
    parent = np.random.default_rng(0).standard_normal((4, 16, 16)).astype(np.float32)  # child 64 x 64, factor 4
    spec = LevelSpec(0, (64, 64), 4, 7, Tiling(tile=32), cond_noise=0.6)
    whole = _conditioning(parent, 4, [Tile(0, 64, 0, 64)], spec)[0]
    for t in (Tile(0, 24, 8, 40), Tile(24, 64, 40, 64)):  # any tiling reads the same numbers
        np.testing.assert_array_equal(_conditioning(parent, 4, [t], spec)[0], whole[:, t.y0 : t.y1, t.x0 : t.x1])
    clean = _conditioning(parent, 4, [Tile(0, 64, 0, 64)], dataclasses.replace(spec, cond_noise=0.0))[0]
    noise = (whole - np.sqrt(1 - 0.6**2) * clean) / 0.6
    assert 0.3 < noise.std() < 1.0  # unit noise at the parent's resolution, bilinearly upsampled
    # drawn per parent pixel, not per child pixel: neighbouring child pixels share most of it
    assert np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1] > 0.6
    for other in (dataclasses.replace(spec, seed=8), dataclasses.replace(spec, level=1)):
        assert not np.allclose(_conditioning(parent, 4, [Tile(0, 64, 0, 64)], other)[0], whole)


def test_slide_noises_parents_as_the_bundle_says_and_records_it(tmp_path: Path) -> None:
    b = cond_aug_bundle(tmp_path / "b.safetensors", cond_aug=300)
    assert _slide(b, tmp_path / "d")["config"]["cond_aug"] == 300  # the bundle's default, made explicit
    assert _slide(b, tmp_path / "e", "--cond-aug", "300", "--batch-size", "1", "--tile-order", "shuffle")["config"]["cond_aug"] == 300
    np.testing.assert_array_equal(_pixels(tmp_path / "d"), _pixels(tmp_path / "e"))  # order and batch do not matter
    assert _slide(b, tmp_path / "z", "--cond-aug", "0")["config"]["cond_aug"] == 0
    assert not np.array_equal(_pixels(tmp_path / "d"), _pixels(tmp_path / "z"))
    _slide(b, tmp_path / "y", "--cond-aug", "100")
    assert not np.array_equal(_pixels(tmp_path / "y"), _pixels(tmp_path / "d"))


def test_slide_refuses_conditioning_noise_the_model_was_not_trained_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors")
    assert _slide(plain, tmp_path / "ok", "--cond-aug", "0")["config"]["cond_aug"] == 0
    capsys.readouterr()
    for ckpt, value in ((plain, "100"), (cond_aug_bundle(tmp_path / "b.safetensors"), "1000"), (plain, "-1")):
        out = tmp_path / f"x{value}"
        assert main(["slide", "--checkpoint", str(ckpt), "--size", "256", "--quiet", "--out", str(out), "--cond-aug", value]) == 2
        err = capsys.readouterr().err.strip()
        assert "cond-aug" in err and len(err.splitlines()) == 1
        assert not out.exists()
    cfg = read_bundle_config(plain)
    with pytest.raises(ValueError, match="cond_aug"):  # a bundle cannot claim it either
        save_bundle(tmp_path / "bad.safetensors", dataclasses.replace(cfg, cond_aug=100), Autoencoder(cfg.ae), UNet(cfg.unet))


def test_training_noises_parents_per_crop_and_tells_the_network(png: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parent = rng.standard_normal((2, 6, 5)).astype(np.float32)
    child = rng.standard_normal((2, 24, 20)).astype(np.float32)
    ls = L.LatentSet([[child, parent, parent]], [[np.ones((24, 20), bool)] * 3])
    cfg = L.TrainConfig(inputs=[], out="", unet=UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), cond_aug=True), tile=8,
                        unet_batch=64, cfg_dropout=0.5, magnifications=(20.0, 5.0, 1.25), cond_aug_max=400)
    _, cond, mask, noise = L.unet_batch(ls, cfg, 0, rng)
    assert noise.std() > 0.3 and np.corrcoef(noise[..., :-1].ravel(), noise[..., 1:].ravel())[0, 1] > 0.6  # parent-res noise
    assert not L.unet_batch(ls, cfg, 2, rng)[3].any()  # the layout level has no parent to noise
    abar = torch.tensor(L.cosine_alphas_cumprod(1000), dtype=torch.float32)
    c, n, m = (torch.from_numpy(a) for a in (cond, noise, mask))
    noised, ct = L.augment_cond(c, n, m, abar, 400, rng)
    assert ct is not None and 0 <= ct.min() and ct.max() <= 400 and len(set(ct.tolist())) > 10
    dropped = m < 0.5
    assert dropped.any() and not ct[dropped].any()  # crops trained without their parent are not noised
    torch.testing.assert_close(noised[dropped], c[dropped])
    s = ((1 - abar[ct.long()]).sqrt() * (ct > 0))[:, None, None, None]
    torch.testing.assert_close(noised, (1 - s * s).sqrt() * c + s * n)
    assert L.augment_cond(c, n, m, abar, 0, rng) == (c, None)
    # a run records the range it trained on and the timestep sampling uses
    unet = dataclasses.replace(tiny_cfg(png, tmp_path).unet, cond_aug=True)
    path = L.train(tiny_cfg(png, tmp_path / "r", unet=unet, cond_aug_max=400, cond_aug=150), log=lambda s: None, progress=False)
    bc = read_bundle_config(path)
    assert bc.unet.cond_aug and bc.cond_aug == 150 and bc.training["cond_aug_max"] == 400


def test_train_flags_for_conditioning_augmentation(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)  # trained without it
    args = ["train", str(png), "--mpp", "0.5", "--init-from", str(first), "--unet-max-steps", "5", "--decoder-every", "0",
            "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "b"), "--cond-aug-max", "300", "--cond-aug", "100"]) == 0
    b = read_bundle_config(tmp_path / "b" / "bundle.safetensors")
    assert b.unet.cond_aug and b.cond_aug == 100 and b.training["cond_aug_max"] == 300
    assert main([*args, "--init-from", str(tmp_path / "b" / "bundle.safetensors"), "--out", str(tmp_path / "c")]) == 0
    assert read_bundle_config(tmp_path / "c" / "bundle.safetensors").cond_aug == 100  # carried on
    capsys.readouterr()
    bad = (["--cond-aug", "50"], ["--cond-aug-max", "1000"], ["--cond-aug", "-1"],
           ["--decoder-of", str(first), "--cond-aug", "0"], ["--init-from", str(first), "--cond-aug", "50"])
    for flags in bad:
        assert main(["train", str(png), "--mpp", "0.5", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "--cond-aug" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
