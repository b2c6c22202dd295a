"""gigagen train --coarse-warps: elastic deformations at 4x the default spacings that only the levels above
the finest learn from (the 5x level has 1/16 of the 20x level's pixels, and memorises them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.models.checkpoint import read_bundle_config
from gigagen.models.vae import Autoencoder
from gigagen.train import data as D
from gigagen.train import loop as L
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name


def test_coarse_warps_move_4x_as_far_with_the_same_local_strain() -> None:
    """At 5x (4x fewer pixels) a coarse warp is what the default warp is at 20x: displacements 4x larger in
    finest-level pixels, local strain the same."""
    def stats(spacings: tuple[int, ...]) -> tuple[float, float]:
        dy, dx = D.elastic_field((2048, 2048), np.random.default_rng(1), spacings)
        return float(np.sqrt(np.mean(dy**2 + dx**2) / 2)), float(np.gradient(dy, axis=0).std())
    (rms, strain), (rms_c, strain_c) = stats(D.ELASTIC_SPACINGS), stats(L.COARSE_WARP_SPACINGS)
    assert 3.0 < rms_c / rms < 5.0 and 0.6 < strain_c / strain < 1.4


def test_coarse_warped_levels_are_seeded_and_differ_from_the_default_warps(png: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(png, tmp_path / "r", holdout_frac=0.25, coarse_warp_strain=0.1)
    (plain,) = L.load_training_levels(cfg)
    (warp,) = L.load_training_levels(cfg, warp=1)
    (bent,) = L.load_training_levels(cfg, warp=1, coarse=True)
    assert [a.shape for a in bent.images] == [a.shape for a in plain.images]
    assert not np.array_equal(bent.images[0], plain.images[0]) and not np.array_equal(bent.images[0], warp.images[0])
    np.testing.assert_array_equal(L.load_training_levels(cfg, warp=1, coarse=True)[0].images[0], bent.images[0])
    np.testing.assert_array_equal(bent.images[1], D.downsample(bent.images[0], 4))  # coarser levels are its own
    (weak,) = L.load_training_levels(dataclasses.replace(cfg, coarse_warp_strain=0.02), warp=1, coarse=True)

    def moved(v: D.LevelImages) -> float:
        return float(np.abs(v.images[1].astype(np.int16) - plain.images[1]).mean())
    assert moved(bent) > 1.5 * moved(weak)  # --coarse-warp-strain reaches the warp


def test_coarse_only_variants_skip_the_finest_level_and_are_never_drawn_there(png: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(png, tmp_path / "r", holdout_frac=0.25)
    ae = Autoencoder(cfg.ae).eval()
    levels = L.load_training_levels(cfg, warp=1, coarse=True)
    full = L.encode_all(levels, ae, cfg, torch.device("cpu"), torch.float32, lambda s: None, orientations=2)
    coarse = L.encode_all(levels, ae, cfg, torch.device("cpu"), torch.float32, lambda s: None, orientations=2, skip_finest=True)
    for a, b in zip(full.latents, coarse.latents):
        assert b[0].shape == (cfg.ae.latent_ch, 0, 0) and a[0].size > 0
        for k in range(1, len(a)):
            np.testing.assert_array_equal(a[k], b[k])  # the coarser levels as the full variant has them
    # unet_batch: a set of one full variant (zeros) and one coarse-only variant (ones)
    ucfg = L.TrainConfig(inputs=[], out="", tile=8, layout_tile=4, unet_batch=16,
                         unet=L.UNetConfig(latent_ch=1, base_ch=8, ch_mult=(1, 2)))
    zeros = [np.zeros((1, 32, 32), np.float32), np.zeros((1, 8, 8), np.float32), np.zeros((1, 4, 4), np.float32)]
    ones = [np.zeros((1, 0, 0), np.float32), np.ones((1, 8, 8), np.float32), np.ones((1, 4, 4), np.float32)]
    ls = L.LatentSet([zeros], [[np.ones(z.shape[1:], bool) for z in zeros]]).extended(
        L.LatentSet([ones], [[np.ones(z.shape[1:], bool) for z in ones]]))
    x0 = L.unet_batch(ls, ucfg, 0, np.random.default_rng(0))[0]
    assert x0.shape == (16, 1, 8, 8) and (x0 == 0).all()  # the finest level: only the full variant
    x0 = L.unet_batch(ls, ucfg, 1, np.random.default_rng(0))[0]
    assert 0 < (x0[:, 0, 0, 0] == 1).sum() < 16  # the 5x level: both


def test_train_with_coarse_warps_records_them_and_the_cli_checks_them(png: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    logs: list[str] = []
    out = L.train(tiny_cfg(png, tmp_path / "a", coarse_warps=2, coarse_warp_strain=0.08), log=logs.append, progress=False)
    assert "encoded 16 image orientations at 3 levels" in logs  # 2 coarse warps x 8 orientations, after the 8 plain ones
    rec = read_bundle_config(out).training
    assert rec["coarse_warps"] == {"n": 2, "strain": 0.08, "spacings_px": list(L.COARSE_WARP_SPACINGS)}
    assert rec["unet_step"] == 3
    base = ["train", str(png), "--out", str(tmp_path / "b"), "--mpp", "0.5"]
    for flags, word in ((["--coarse-warps", "-1"], "--coarse-warps"), (["--coarse-warps", "65"], "--coarse-warps"),
                        (["--coarse-warp-strain", "0.3"], "--coarse-warp-strain"),
                        (["--coarse-warps", "2", "--level-probs", "1,0,0"], "--level-probs"),
                        (["--coarse-warps", "2", "--decoder-of", str(out)], "--decoder-of")):
        assert main(base + flags) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()  # refused before anything is written
