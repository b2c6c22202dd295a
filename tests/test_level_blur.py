"""Level smoothing (BundleConfig.level_blur, `gigagen train --level-blur`): a real image is smoothed before it is
encoded at a level, in training and wherever a real level is read for the bundle; the bundle records it, an
--init-from run carries it, and networks that learnt another smoothing are not carried."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle, validate_config
from gigagen.models.vae import Autoencoder
from gigagen.train import data as D
from gigagen.train import loop as L

from conftest import make_bundle, make_guided_bundle, tiny_config
from test_train import fake_he, png, tiny_cfg  # noqa: F401 - png is a fixture used by name


def test_blurred_smooths_keeps_the_mean_and_is_the_identity_at_zero() -> None:
    img = fake_he(128, 128)
    assert D.blurred(img, 0) is img
    out = D.blurred(img, 1.5)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert abs(out.astype(float).mean() - img.astype(float).mean()) < 1.0

    def detail(a: np.ndarray) -> float:  # energy of neighbour differences: what smoothing removes
        return float(np.abs(np.diff(a.astype(float), axis=0)).mean() + np.abs(np.diff(a.astype(float), axis=1)).mean())

    assert detail(out) < 0.9 * detail(img)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)  # all detail, no structure
    assert detail(D.blurred(noise, 1.5)) < 0.25 * detail(noise)
    assert detail(D.blurred(noise, 3.0)) < detail(D.blurred(noise, 1.5))


def test_a_bundle_records_its_smoothing_and_refuses_one_the_engine_cannot_use(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b.safetensors", level_blur=(0.0, 1.5, 0.0))
    c = load_bundle(path).config
    assert c.level_blur == (0.0, 1.5, 0.0) and (c.blur_at(0), c.blur_at(1), c.blur_at(2)) == (0.0, 1.5, 0.0)
    assert tiny_config().blur_at(1) == 0.0
    for bad in ((1.0, 0.0, 0.0), (0.0, 1.0), (0.0, -1.0, 0.0)):  # the finest smoothed, a level missing, negative
        with pytest.raises(ValueError, match="level_blur"):
            validate_config(tiny_config(level_blur=bad))


def test_level_array_reads_a_level_as_the_bundle_smooths_it(tmp_path: Path) -> None:
    plain = load_bundle(make_bundle(tmp_path / "a.safetensors", seed=3))
    smooth = load_bundle(make_bundle(tmp_path / "b.safetensors", seed=3, level_blur=(0.0, 1.5, 0.0)))  # the same weights
    img = fake_he(64, 64)
    assert np.array_equal(L.level_array(smooth, img, 0), L.level_array(plain, img, 0))
    assert np.array_equal(L.level_array(smooth, img, 1), L.level_array(plain, D.blurred(img, 1.5), 1))
    assert not np.allclose(L.level_array(smooth, img, 1), L.level_array(plain, img, 1))


def test_encode_all_smooths_only_the_levels_it_is_told_to(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "x.png", tmp_path / "run")
    torch.manual_seed(0)
    ae = Autoencoder(cfg.ae).eval()
    levels = [D.build_levels(fake_he(256, 256), (4, 4), cfg.ae.factor)]
    args = (levels, ae, cfg, torch.device("cpu"), torch.bfloat16, lambda _: None)
    plain = L.encode_all(*args, orientations=2)
    smooth = L.encode_all(*args, orientations=2, blur=(0.0, 2.0, 0.0))
    for a, b in zip(plain.latents, smooth.latents):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
        assert not np.allclose(a[1], b[1])


def test_training_records_the_smoothing_and_init_from_carries_it(png: Path, tmp_path: Path) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a", level_blur=(0.0, 2.0, 0.0)), log=lambda s: None, progress=False)
    assert load_bundle(first).config.level_blur == (0.0, 2.0, 0.0)
    resumed = L.train(tiny_cfg(png, tmp_path / "a", unet_max_steps=5), resume=True, log=lambda s: None, progress=False)
    assert load_bundle(resumed).config.level_blur == (0.0, 2.0, 0.0)  # --resume keeps the run's smoothing
    with pytest.raises(UserError, match="--level-blur"):
        L.train(tiny_cfg(png, tmp_path / "a", unet_max_steps=6, level_blur=(0.0, 1.0, 0.0)), resume=True, log=lambda s: None, progress=False)
    second = L.train(tiny_cfg(png, tmp_path / "b", init_from=str(first), unet_max_steps=4, decoder_every=0),
                     log=lambda s: None, progress=False)
    assert load_bundle(second).config.level_blur == (0.0, 2.0, 0.0)  # not given: the bundle's
    third = L.train(tiny_cfg(png, tmp_path / "c", init_from=str(first), unet_max_steps=4, decoder_every=0, level_blur=()),
                    log=lambda s: None, progress=False)
    assert load_bundle(third).config.level_blur == ()  # given: replaces it


def test_a_guide_learnt_on_other_parents_is_not_carried(tmp_path: Path) -> None:
    b = load_bundle(make_guided_bundle(tmp_path / "g.safetensors"))
    base = L.TrainConfig(inputs=[], out=Path("unused"), magnifications=b.config.magnifications)
    kept = L.carry_over(b, "g", base)
    assert "guide" in kept and kept["level_blur"] == ()
    assert "guide" in L.carry_over(b, "g", dataclasses.replace(base, level_blur=()))  # the same smoothing, given
    assert "guide" not in L.carry_over(b, "g", dataclasses.replace(base, level_blur=(0.0, 1.5, 0.0)))


def test_cli_refuses_smoothing_it_cannot_honour(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "b.safetensors")
    out = str(tmp_path / "run")
    for extra, words in ((["--level-blur", "1,0,0"], "first 0"), (["--level-blur", "0,1"], "3 sigmas"),
                         (["--level-blur", "0,1,0", "--guide-of", str(bundle)], "--guide-of"),
                         (["--level-blur", "0,1,0", "--init-from", str(bundle), "--distill"], "--level-blur")):
        assert main(["train", str(png), "--out", out, "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not Path(out).exists()
