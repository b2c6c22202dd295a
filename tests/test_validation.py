"""gigagen train against fitting one region: held-out validation, the best checkpoint, early stopping,
denoiser dropout, scale and elastic augmentation."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.models.checkpoint import load_bundle, read_bundle_config
from gigagen.train import data as D
from gigagen.train import loop as L
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name

quiet = dict(log=lambda s: None, progress=False)


def val_rows(run: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(open(run / "loss.csv")) if r["phase"].startswith("val_")]


def test_held_out_levels_are_the_band_and_scaled_levels_are_resampled(png: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(png, tmp_path / "r", holdout_frac=0.25)
    rgb, _ = D.read_image(png, 0.5)
    _, band = D.split_holdout(rgb, 0.25)
    (held,) = L.load_training_levels(cfg, part=1)
    h, w = held.images[0].shape[:2]
    np.testing.assert_array_equal(held.images[0], band[:h, :w])  # the band, never the training part
    (train,) = L.load_training_levels(cfg)
    (big,) = L.load_training_levels(cfg, scale=1.5)
    assert big.images[0].shape[0] > 1.4 * train.images[0].shape[0] - 32
    # a band too small for the cascade gives no held-out levels rather than an error
    assert L.load_training_levels(tiny_cfg(png, tmp_path / "r", holdout_frac=0.02), part=1) == []


def test_validation_logs_both_splits_and_exports_the_best_held_out_checkpoint(png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = L.train(tiny_cfg(png, run, unet_max_steps=5, checkpoint_minutes=0, unet_lr=3e-3, warmup_steps=1), **quiet)
    rows = val_rows(run)
    levels = {(r["phase"], json.loads(r["extra"])["level"]) for r in rows}
    # 20x and 5x in both splits; the 1.25x held-out band (3 latent px) is too small and left out of both
    assert levels == {(s, lv) for s in ("val_held", "val_train") for lv in (0, 1)}
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == [0, 1, 2, 3, 4, 5]  # before the first step, then at every checkpoint
    shares = tiny_cfg(png, run).level_probs
    score = {s: sum(shares[json.loads(r["extra"])["level"]] * float(r["loss"]) for r in rows
                    if r["phase"] == "val_held" and int(r["step"]) == s) / (shares[0] + shares[1]) for s in steps}
    best = 0
    for s in steps:  # a new best is 0.1% lower than the last
        best = s if score[s] < score[best] * (1 - 1e-3) else best
    assert best > 0  # the loss did move: the test checks a real choice
    rec = read_bundle_config(run / "bundle-best.safetensors").training
    assert rec["unet_step"] == rec["validation"]["best_step"] == best
    assert rec["validation"]["best_held_v_loss"] == pytest.approx(score[best], abs=1e-4)
    assert read_bundle_config(path).training["unet_step"] == 5  # bundle.safetensors stays the last one
    assert (run / "loss.png").stat().st_size > 0


def test_validation_is_fixed_crops_noise_and_eval_mode(png: Path, tmp_path: Path) -> None:
    """The same numbers for the same weights (so they move only with the denoiser), even with dropout."""
    cfg = tiny_cfg(png, tmp_path / "r", holdout_frac=0.25)
    rng = np.random.default_rng(0)
    lat = [[rng.standard_normal((2, 32 // 4**k, 48 // 4**k)).astype(np.float32) for k in range(3)] for _ in range(2)]
    masks = [[np.ones(z.shape[1:], bool) for z in v] for v in lat]
    splits = {"train": L.LatentSet(lat[:1], masks[:1]), "held": L.LatentSet(lat[1:], masks[1:])}
    a, b = L.build_valset(splits, cfg, torch.device("cpu")), L.build_valset(splits, cfg, torch.device("cpu"))
    for k in a.batches:
        for x, y in zip(a.batches[k], b.batches[k]):
            assert torch.equal(x, y)
    unet = L.UNet(L.UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False, dropout=0.5)).train()
    torch.nn.init.normal_(unet.out.weight, std=0.1)
    first = L.val_losses(unet, a, torch.float32)
    assert first == L.val_losses(unet, a, torch.float32) and unet.training  # eval inside, mode restored
    assert set(first) == {(s, lv) for s in ("train", "held") for lv in (0, 1)}  # 1.25x: 2 px < 2 divisors
    assert a.sides == {0: 8, 1: 8} and first[("held", 0)] != first[("train", 0)]
    assert L.val_score(first, cfg.level_probs) == pytest.approx((0.5 * first[("held", 0)] + 0.3 * first[("held", 1)]) / 0.8)


def test_early_stop_ends_the_denoiser_and_a_resume_keeps_its_count(png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # an LR that cannot move the held-out loss by 0.1%: every validation after the first is stale
    cfg = tiny_cfg(png, run, unet_max_steps=50, checkpoint_minutes=0, unet_lr=1e-12, early_stop=2)
    L.train(cfg, **quiet)
    assert read_bundle_config(run / "bundle.safetensors").training["unet_step"] == 2
    n = len(val_rows(run))
    L.train(cfg, resume=True, **quiet)  # stale count and last validated step come back from state.pt
    assert read_bundle_config(run / "bundle.safetensors").training["unet_step"] == 2 and len(val_rows(run)) == n
    assert read_bundle_config(run / "bundle-best.safetensors").training["validation"]["best_step"] == 0


def test_no_held_out_band_means_no_validation_best(png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    L.train(tiny_cfg(png, run, holdout_frac=0.0, early_stop=1, checkpoint_minutes=0, unet_max_steps=4), **quiet)
    assert not (run / "bundle-best.safetensors").exists()
    assert read_bundle_config(run / "bundle.safetensors").training["unet_step"] == 4  # nothing to stop on
    assert {r["phase"] for r in val_rows(run)} == {"val_train"}


def test_unet_batch_draws_only_variants_that_hold_the_crop() -> None:
    """Scale augmentation makes variants of different sizes; a variant smaller than a level's crop (the
    0.87x layout latent under the 16-px layout tile) must not be drawn there, nor shrink the others' crop."""
    cfg = L.TrainConfig(inputs=[], out="", tile=8, layout_tile=8, unet_batch=12,
                        unet=L.UNetConfig(latent_ch=1, base_ch=8, ch_mult=(1, 2)))
    small = [np.zeros((1, 24, 24), np.float32), np.zeros((1, 6, 6), np.float32), np.zeros((1, 2, 2), np.float32)]
    large = [np.ones((1, 40, 40), np.float32), np.ones((1, 10, 10), np.float32), np.ones((1, 3, 3), np.float32)]
    ls = L.LatentSet([small, large], [[np.ones(z.shape[1:], bool) for z in v] for v in (small, large)])
    x0 = L.unet_batch(ls, cfg, 1, np.random.default_rng(0))[0]
    assert x0.shape == (12, 1, 8, 8) and (x0 == 1).all()  # all from the large variant
    x0 = L.unet_batch(ls, cfg, 0, np.random.default_rng(0))[0]
    assert x0.shape == (12, 1, 8, 8) and 0 < (x0[:, 0, 0, 0] == 1).sum() < 12  # both hold 8: both drawn


def test_elastic_field_is_smooth_with_the_documented_strain() -> None:
    rms = []
    for seed in range(4):
        dy, dx = D.elastic_field((1024, 1280), np.random.default_rng(seed))
        rms.append(np.sqrt(np.mean(dy**2 + dx**2) / 2))
        strain = np.concatenate([np.gradient(dy, axis=0).ravel(), np.gradient(dx, axis=1).ravel(),
                                 np.gradient(dy, axis=1).ravel()])
        assert 0.07 < strain.std() < 0.13 and np.percentile(np.abs(strain), 99) < 0.35  # as data.elastic_warp says
    assert 9 < np.mean(rms) < 14  # about 11 px
    dy, dx = D.elastic_field((1024, 1280), np.random.default_rng(0))
    again = D.elastic_field((1024, 1280), np.random.default_rng(0))
    assert np.array_equal(again[0], dy) and not np.allclose(D.elastic_field((1024, 1280), np.random.default_rng(1))[0], dy)


def test_elastic_warp_resamples_through_its_field() -> None:
    h, w = 300, 256
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.arange(w, dtype=np.uint8)[None, :]  # red = x, green = y: the warp shows where it sampled
    rgb[..., 1] = np.minimum(np.arange(h), 255).astype(np.uint8)[:, None]
    out = D.elastic_warp(rgb, np.random.default_rng(3))
    dy, dx = D.elastic_field((h, w), np.random.default_rng(3))
    xs = np.arange(w)[None, :] + dx
    ys = np.arange(h)[:, None] + dy
    inside = (xs > 2) & (xs < w - 3) & (ys > 2) & (ys < 250)  # away from the mirrored borders and the clipped rows
    assert inside.mean() > 0.7
    assert np.abs(out[..., 0][inside] - xs[inside]).max() <= 1.0
    assert np.abs(out[..., 1][inside] - ys[inside]).max() <= 1.0
    assert D.elastic_warp(rgb, np.random.default_rng(3), strain=0.0) is rgb


def test_elastic_variants_are_warped_training_parts(png: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(png, tmp_path / "r", holdout_frac=0.25)
    (plain,) = L.load_training_levels(cfg)
    (w1,) = L.load_training_levels(cfg, warp=1)
    (w2,) = L.load_training_levels(cfg, warp=2)
    assert [a.shape for a in w1.images] == [a.shape for a in plain.images]
    assert not np.array_equal(w1.images[0], plain.images[0]) and not np.array_equal(w1.images[0], w2.images[0])
    np.testing.assert_array_equal(L.load_training_levels(cfg, warp=1)[0].images[0], w1.images[0])  # seeded
    np.testing.assert_array_equal(w1.images[1], D.downsample(w1.images[0], 4))  # coarser levels are the warped image's
    assert abs(float(w1.images[0].mean()) - float(plain.images[0].mean())) < 3  # the same tissue, moved
    (strong,) = L.load_training_levels(dataclasses.replace(cfg, elastic_strain=0.15), warp=1)  # --elastic-strain

    def moved(v: D.LevelImages) -> float:
        return float(np.abs(v.images[0].astype(np.int16) - plain.images[0]).mean())
    assert moved(strong) > 1.3 * moved(w1)


def test_elastic_strain_scales_the_field_and_folds_nothing_up_to_its_cap() -> None:
    """The field is linear in --elastic-strain, and the CLI's cap (0.2) is where folding begins: the
    deformation's Jacobian determinant stays positive at 0.1 and turns negative in a few pixels at 0.2."""
    def folded(strain: float) -> float:
        dy, dx = D.elastic_field((1024, 1280), np.random.default_rng(0), strain=strain)
        (gyy, gyx), (gxy, gxx) = np.gradient(dy), np.gradient(dx)
        return float(((1 + gyy) * (1 + gxx) - gyx * gxy <= 0).mean())
    base = D.elastic_field((512, 512), np.random.default_rng(5))
    double = D.elastic_field((512, 512), np.random.default_rng(5), strain=2 * D.ELASTIC_STRAIN)
    np.testing.assert_allclose(double[0], 2 * base[0], atol=1e-3)
    assert folded(0.1) == 0.0 and 0.0 < folded(0.2) < 0.05


def test_scale_and_elastic_aug_and_dropout_reach_the_training(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), **quiet)
    logs: list[str] = []
    out = L.train(tiny_cfg(png, tmp_path / "b", init_from=str(first), decoder_every=0, scale_aug=(0.8, 1.25), elastic_aug=2,
                           unet=L.UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False, dropout=0.3),
                           unet_max_steps=5), log=logs.append, progress=False)
    assert "encoded 40 image orientations at 3 levels" in logs  # 8 orientations at scales 1, 0.8, 1.25 and 2 warps
    b = load_bundle(out)
    assert b.config.unet.dropout == 0.3 and b.config.training["scale_aug"] == [0.8, 1.25]
    assert b.config.training["elastic_aug"] == 2 and b.config.training["elastic_strain"] == D.ELASTIC_STRAIN
    assert b.config.training["unet_dropout"] == 0.3 and not b.unet.training
    x = torch.randn(1, 2, 8, 8)
    args = (x, torch.tensor([500.0]), torch.tensor([0]), torch.zeros_like(x), torch.tensor([0.0]))
    assert torch.equal(b.unet(*args), b.unet(*args))  # inference never drops
    # the CLI takes the flags (dropout may differ from the --init-from bundle's) and refuses bad ones
    assert main(["train", str(png), "--out", str(tmp_path / "c"), "--mpp", "0.5", "--init-from", str(first),
                 "--unet-dropout", "0.2", "--unet-max-steps", "4", "--decoder-every", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert read_bundle_config(tmp_path / "c" / "bundle.safetensors").unet.dropout == 0.2
    for flags, word in ((["--unet-dropout", "1"], "--unet-dropout"), (["--scale-aug", "1"], "--scale-aug"),
                        (["--scale-aug", "3"], "--scale-aug"), (["--early-stop", "-1"], "--early-stop"),
                        (["--elastic-aug", "-1"], "--elastic-aug"), (["--elastic-strain", "0.3"], "--elastic-strain"),
                        (["--elastic-strain", "0"], "--elastic-strain")):
        assert main(["train", str(png), "--out", str(tmp_path / "d"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1
