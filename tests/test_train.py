"""gigagen train: data pipeline, conditioning as at inference, the loop (checkpoints, resume, Ctrl-C) and the CLI."""

from __future__ import annotations

import csv
import shutil
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gigagen.cli import main
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle, read_bundle_config
from gigagen.models.unet import UNetConfig
from gigagen.models.vae import AutoencoderConfig
from gigagen.train import data as D
from gigagen.train import loop as L

PINK, PURPLE = (235, 150, 190), (90, 50, 140)


def fake_he(h: int = 512, w: int = 384, seed: int = 0) -> np.ndarray:
    """White background, a pink tissue ellipse with purple 'nuclei' (radius 4 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 245, np.uint8)
    tissue = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 < 1
    img[tissue] = PINK
    for _ in range(120):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        if tissue[cy, cx]:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = PURPLE
    return img


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    from PIL import Image

    p = tmp_path / "he.png"
    Image.fromarray(fake_he()).save(p)
    return p


def tiny_cfg(png: Path, out: Path, **kw) -> L.TrainConfig:
    base = dict(
        inputs=[str(png)], out=str(out), mpp=0.5, ae=AutoencoderConfig(base_ch=4, ch_mult=(1, 2), latent_ch=2),
        unet=UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False), ae_crop=32, ae_batch=2,
        tile=8, layout_tile=4, unet_batch=2, max_minutes=5, ae_minutes=5, ae_max_steps=3, unet_max_steps=3,
        checkpoint_minutes=10, threads=1,
    )
    return L.TrainConfig(**(base | kw))


def test_dihedral_gives_eight_distinct_orientations() -> None:
    a = np.arange(12).reshape(3, 4, 1)
    outs = {D.dihedral(a, k).tobytes() + bytes(D.dihedral(a, k).shape) for k in range(8)}
    assert len(outs) == 8


def test_stain_jitter_is_identity_at_zero_and_mild_otherwise() -> None:
    img = fake_he(64, 64)
    rng = np.random.default_rng(0)
    assert np.array_equal(D.stain_jitter(img, rng, 1e-9), img)
    out = D.stain_jitter(img, rng, 0.3)
    diff = np.abs(out.astype(int) - img)
    assert 0 < diff.mean() < 30


def test_tissue_mask_and_holdout_band() -> None:
    img = fake_he()
    mask = D.tissue_mask(img)
    assert mask[256, 192] and not mask[5, 5]
    train, held = D.split_holdout(img, 0.25)
    assert train.shape[0] == 384 and held.shape[0] == 128
    assert np.array_equal(np.concatenate([train, held]), img)


def test_png_without_pixel_size_needs_mpp(png: Path) -> None:
    with pytest.raises(UserError, match="--mpp"):
        D.read_image(png)
    rgb, mpp = D.read_image(png, 0.25)
    assert rgb.shape == (512, 384, 3) and mpp == 0.25


def test_tiff_pixel_size_is_read_from_the_file(tmp_path: Path) -> None:
    import tifffile

    p = tmp_path / "he.tif"
    tifffile.imwrite(p, fake_he(64, 64), resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    _, mpp = D.read_image(p)
    assert mpp == pytest.approx(0.25)


def test_levels_are_aligned_box_downsamples() -> None:
    li = D.build_levels(fake_he(), (2, 2), 4)
    assert [im.shape[:2] for im in li.images] == [(512, 384), (256, 192), (128, 96)]
    assert np.abs(li.images[1][10, 10].astype(int) - li.images[0][20:22, 20:22].mean(axis=(0, 1))).max() <= 1


def test_training_conditioning_equals_upsampling_the_whole_parent_canvas() -> None:
    """Borders match inference: a crop's conditioning is the whole parent latent upsampled, then cropped."""
    rng = np.random.default_rng(0)
    parent = rng.standard_normal((2, 6, 5)).astype(np.float32)
    child = rng.standard_normal((2, 24, 20)).astype(np.float32)
    ls = L.LatentSet([[child, parent, parent]], [[np.ones((24, 20), bool)] * 3])
    cfg = L.TrainConfig(inputs=[], out="", unet=UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2)), tile=8,
                        unet_batch=4, cfg_dropout=0.0, magnifications=(20.0, 5.0, 1.25))
    x0, cond, mask, noise = L.unet_batch(ls, cfg, 0, rng)
    full = F.interpolate(torch.from_numpy(parent)[None], scale_factor=4, mode="bilinear", align_corners=False)[0].numpy()
    for x, c in zip(x0, cond):
        ys, xs = np.argwhere((child == x[:, :1, :1]).all(axis=0))[0]
        np.testing.assert_allclose(c, full[:, ys : ys + 8, xs : xs + 8], atol=1e-5)
    assert mask.tolist() == [1.0] * 4 and not noise.any()  # no conditioning augmentation asked for
    _, cond2, mask2, _ = L.unet_batch(ls, cfg, 2, rng)
    assert not cond2.any() and not mask2.any()  # the layout level is never conditioned


def test_train_writes_a_loadable_trained_bundle_and_resumes(png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_cfg(png, run)
    path = L.train(cfg, log=lambda s: None, progress=False)
    bundle = load_bundle(path)
    assert bundle.config.trained and bundle.config.latent_scale > 0
    assert bundle.config.training["unet_step"] > 0 and bundle.config.training["holdout_frac"] == 0.2
    rows = list(csv.DictReader(open(run / "loss.csv")))
    assert {r["phase"] for r in rows} == {"ae", "unet", "val_held", "val_train"}
    assert (run / "loss.png").stat().st_size > 0
    steps = bundle.config.training["unet_step"]
    with pytest.raises(UserError, match="--resume"):
        L.train(cfg, log=lambda s: None, progress=False)
    L.train(tiny_cfg(png, run, unet_max_steps=5), resume=True, log=lambda s: None, progress=False)
    assert load_bundle(path).config.training["unet_step"] == 5 and steps == 3


def test_ctrl_c_saves_a_checkpoint(png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = L.ae_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(L, "ae_loss", flaky)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        L.train(tiny_cfg(png, run, ae_max_steps=10), log=lambda s: None, progress=False)
    blob = torch.load(run / "state.pt", weights_only=False)
    assert blob["ae_step"] == 2


def test_cli_train_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and len(err.splitlines()) == 1
    assert main(["train", str(tmp_path / "x.png"), "--holdout-frac", "1.5"]) == 2


def test_training_levels_follow_the_cascade_zoom_not_the_autoencoder_factor(png: Path, tmp_path: Path) -> None:
    """20x/5x/1.25x levels are 4x apart whatever the autoencoder's factor (a factor-8 autoencoder once
    made them 8x apart, so the parent conditioning covered the wrong field of view)."""
    for mult in ((1, 2), (1, 2, 2, 2)):
        cfg = tiny_cfg(png, tmp_path / "r", ae=AutoencoderConfig(base_ch=4, ch_mult=mult, latent_ch=2))
        (li,) = L.load_training_levels(cfg)
        h, w = li.images[0].shape[:2]
        assert h % (16 * cfg.ae.factor) == 0 and w % (16 * cfg.ae.factor) == 0
        assert [im.shape[:2] for im in li.images] == [(h, w), (h // 4, w // 4), (h // 16, w // 16)]
        np.testing.assert_array_equal(li.images[1], D.downsample(li.images[0], 4))


def test_cascade_zooms_are_whole_factors_finest_first() -> None:
    assert L.checked_zooms((20.0, 5.0, 1.25)) == (4, 4) and L.checked_zooms((40.0, 20.0)) == (2,)
    assert L.checked_zooms((20.0, 5.0, 2.5)) == (4, 2) and L.checked_zooms((20.0, 5.0, 5.0, 1.25)) == (4, 1, 4)
    for bad in ((20.0, 8.0), (5.0, 20.0)):
        with pytest.raises(UserError, match="whole factors"):
            L.checked_zooms(bad)


def test_init_autoencoder_reuses_a_bundle_and_trains_only_the_denoiser(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    second = L.train(tiny_cfg(png, tmp_path / "b", init_autoencoder=str(first), decoder_every=0), log=lambda s: None, progress=False)
    a, b = load_bundle(first), load_bundle(second)
    for (name, pa), pb in zip(a.ae.state_dict().items(), b.ae.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert {r["phase"] for r in csv.DictReader(open(tmp_path / "b" / "loss.csv"))} == {"unet", "val_held", "val_train"}
    assert b.config.training["autoencoder_from"] == first.name and b.config.training["ae_step"] == 3
    L.train(tiny_cfg(png, tmp_path / "b", unet_max_steps=4, decoder_every=0), resume=True, log=lambda s: None, progress=False)
    assert load_bundle(second).config.training["autoencoder_from"] == first.name  # kept across --resume
    assert not all(torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))
    other = AutoencoderConfig(base_ch=8, ch_mult=(1, 2), latent_ch=2)
    with pytest.raises(UserError, match="--init-autoencoder"):
        L.train(tiny_cfg(png, tmp_path / "c", ae=other, init_autoencoder=str(first)), log=lambda s: None, progress=False)
    assert main(["train", str(png), "--out", str(tmp_path / "b"), "--resume", "--init-autoencoder", str(first)]) == 2
    assert "--init-autoencoder" in capsys.readouterr().err


def test_init_from_continues_a_bundles_denoiser_with_its_record(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    a = load_bundle(first)
    ft = tiny_cfg(png, tmp_path / "b", init_from=str(first), unet_max_steps=5, decoder_every=0, warmup_steps=2)
    second = L.train(ft, log=lambda s: None, progress=False)
    b = load_bundle(second)
    for (name, pa), pb in zip(a.ae.state_dict().items(), b.ae.state_dict().values()):
        assert torch.equal(pa, pb), name  # the autoencoder, hence the latents, are the bundle's
    assert b.config.latent_scale == a.config.latent_scale
    rows = list(csv.DictReader(open(tmp_path / "b" / "loss.csv")))
    assert {r["phase"] for r in rows} == {"unet", "val_held", "val_train"}
    assert [int(r["step"]) for r in rows if r["phase"] == "unet"] == [4, 5]  # 3 steps carried on
    rec = b.config.training
    assert rec["denoiser_from"] == first.name and rec["unet_step"] == 5 and rec["ae_step"] == 3
    # the denoiser moved from the bundle's weights, but little (it started there, with warm-up)
    moved = [(pa - pb).abs().max().item() for pa, pb in zip(a.unet.state_dict().values(), b.unet.state_dict().values())]
    assert max(moved) > 0
    L.train(tiny_cfg(png, tmp_path / "b", init_from=str(first), unet_max_steps=6, decoder_every=0), resume=True, log=lambda s: None, progress=False)
    assert load_bundle(second).config.training["denoiser_from"] == first.name  # kept across --resume
    other = UNetConfig(latent_ch=2, base_ch=16, ch_mult=(1, 2), attn_lowest=False)
    with pytest.raises(UserError, match="--init-from"):
        L.train(tiny_cfg(png, tmp_path / "c", unet=other, init_from=str(first)), log=lambda s: None, progress=False)
    assert main(["train", str(png), "--out", str(tmp_path / "d"), "--init-from", str(first), "--resume"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["train", str(png), "--out", str(tmp_path / "d"), "--level-probs", "1,0"]) == 2
    assert "--level-probs" in capsys.readouterr().err


def test_denoiser_lr_warms_up_a_fresh_optimizer_and_decays_before_the_deadline() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=1.0)
    assert L.denoiser_lr(opt, 1e-3, 10, 3600, 0) == pytest.approx(1e-4)
    for _ in range(20):
        L.denoiser_lr(opt, 1e-3, 10, 3600, 0)
        p.grad = torch.ones(3)
        opt.step()
    assert L.adam_steps(opt) == 20
    assert L.denoiser_lr(opt, 1e-3, 10, 3600, 600) == pytest.approx(1e-3)  # decay not begun
    assert L.denoiser_lr(opt, 1e-3, 10, 300, 600) == pytest.approx(1e-3 * 0.55)  # half-way through it
    assert L.denoiser_lr(opt, 1e-3, 10, -5, 600) == pytest.approx(1e-4) == opt.param_groups[0]["lr"]


def test_level_map_carries_embeddings_to_another_cascade() -> None:
    old = (20.0, 5.0, 1.25)
    assert L.level_map(old, old) == [0, 1, 2]
    # 10x ties between 20x and 5x (one octave each way): the finer; 2.5x: 5x; the layout stays the layout
    assert L.level_map(old, (20.0, 10.0, 5.0, 2.5, 1.25)) == [0, 0, 1, 1, 2]
    assert L.level_map((20.0, 10.0, 5.0, 2.5, 1.25), old) == [0, 2, 4]


def test_init_from_moves_a_bundle_to_a_finer_cascade(png: Path, tmp_path: Path) -> None:
    """A factor-4 bundle continued as a factor-2 cascade: same weights, level embeddings mapped, and the
    result generates a slide through all five levels."""
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    mags = (20.0, 10.0, 5.0, 2.5, 1.25)
    unet5 = UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False, n_levels=5)
    cfg = tiny_cfg(png, tmp_path / "b", init_from=str(first), unet=unet5, magnifications=mags,
                   level_probs=(0.4, 0.15, 0.15, 0.15, 0.15), unet_max_steps=3, decoder_every=0)
    b = load_bundle(L.train(cfg, log=lambda s: None, progress=False))
    a = load_bundle(first)
    assert b.config.magnifications == mags and b.config.unet.n_levels == 5
    rows = list(csv.DictReader(open(tmp_path / "b" / "loss.csv")))
    assert [r for r in rows if r["phase"] == "unet"] == []  # unet_max_steps reached by the carried-on count: the weights are the bundle's
    torch.testing.assert_close(b.unet.level_emb.weight, a.unet.level_emb.weight[[0, 0, 1, 1, 2]])
    out = tmp_path / "slide"
    assert main(["slide", "--size", "64", "--steps", "2", "--checkpoint", str(tmp_path / "b" / "bundle.safetensors"),
                 "--out", str(out), "--quiet", "--formats", "none"]) == 0
    import json

    timings = json.loads((out / "run.json").read_text())["timings_s"]
    assert [k for k in timings if k.startswith("level")] == ["level4_1.25x", "level3_2.5x", "level2_5x", "level1_10x", "level0_20x"]
    L.train(dataclasses.replace(cfg, unet_max_steps=12), resume=True, log=lambda s: None, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "b" / "loss.csv")))
    assert [int(r["step"]) for r in rows if r["phase"] == "unet"] == list(range(4, 13))  # the five-level run trains


def test_cli_magnifications_are_checked(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(png), "--out", str(tmp_path / "r"), "--magnifications", "20,8,1"]) == 2
    assert "whole factors" in capsys.readouterr().err
    # a repeated magnification only as pixels under its latent
    assert main(["train", str(png), "--out", str(tmp_path / "r"), "--magnifications", "20,5,5,1.25", "--latent-ch", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert "more than one of its own" in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    assert main(["train", str(png), "--out", str(tmp_path / "r"), "--magnifications", "20,10,5", "--level-probs", "0.5,0.5"]) == 2
    assert "3 non-negative shares" in capsys.readouterr().err


def test_cli_init_from_takes_models_tile_and_cascade_from_the_bundle(png: Path, tmp_path: Path) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    out = tmp_path / "b"
    rc = main(["train", str(png), "--out", str(out), "--init-from", str(first), "--mpp", "0.5", "--max-minutes", "0.03", "--decoder-every", "0",
               "--unet-batch", "2", "--threads", "1", "--quiet"])
    assert rc == 0
    a, b = read_bundle_config(first), read_bundle_config(out / "bundle.safetensors")
    assert (b.ae, b.unet, b.tile, b.magnifications) == (a.ae, a.unet, a.tile, a.magnifications)
    assert b.training["denoiser_from"] == first.name and b.training["unet_step"] >= a.training["unet_step"]
    assert b.training["layout_tile"] == a.training["layout_tile"] == 4  # the bundle's, not the flag's default 16


def test_cli_init_from_takes_a_new_layout_tile_and_refuses_a_bad_one(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fine-tune may train the layout level on larger crops (after a smaller autoencoder factor, the same
    layout pixels need more latent pixels); the tile must suit the bundle's UNet."""
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    args = ["train", str(png), "--init-from", str(first), "--mpp", "0.5", "--max-minutes", "0.03", "--decoder-every", "0",
            "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "b"), "--layout-tile", "8"]) == 0
    b = read_bundle_config(tmp_path / "b" / "bundle.safetensors")
    assert b.training["layout_tile"] == 8 and b.tile == read_bundle_config(first).tile
    divisor = b.unet.divisor
    assert divisor > 1
    for bad in (str(divisor + 1), "0"):
        assert main(args + ["--out", str(tmp_path / "c"), "--layout-tile", bad]) == 2
        err = capsys.readouterr().err
        assert "--layout-tile" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
    for other in ("--guide-of", "--decoder-of"):  # these keep the bundle's tiles; the flag is refused, not ignored
        assert main(["train", str(png), "--out", str(tmp_path / "d"), other, str(first), "--layout-tile", "8"]) == 2
        err = capsys.readouterr().err
        assert "--layout-tile" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_guide_of_trains_a_small_guide_and_exports_the_bundle_with_it(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    a = load_bundle(first)
    small = UNetConfig(latent_ch=2, base_ch=4, ch_mult=(1, 2), attn_lowest=False)
    cfg = tiny_cfg(png, tmp_path / "g", unet=small, guide_of=str(first), autoguidance=2.5, unet_max_steps=4)
    out = L.train(cfg, log=lambda s: None, progress=False)
    g = load_bundle(out)
    # the bundle's autoencoder, denoiser and latent scale are kept bit for bit; the guide is the new network
    for mine, theirs in ((a.ae, g.ae), (a.unet, g.unet)):
        for (name, pa), pb in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(pa, pb), name
    assert g.guide is not None and g.config.guide == small and g.config.autoguidance == 2.5
    assert g.config.guide_levels == (0, 1, 2)  # trained with crops at every level (tiny_cfg's level shares)
    assert g.config.latent_scale == a.config.latent_scale and g.config.unet == a.config.unet
    assert g.config.training["guide"]["unet_step"] == 4 and g.config.training["guide"]["guide_of"] == first.name
    assert g.config.training["unet_step"] == a.config.training["unet_step"]  # the main record is the bundle's
    assert {r["phase"] for r in csv.DictReader(open(tmp_path / "g" / "loss.csv"))} == {"unet", "val_held", "val_train"}  # no autoencoder or decoder steps
    # resumed with the same --guide-of it carries on; without it, it is refused
    L.train(dataclasses.replace(cfg, unet_max_steps=5), resume=True, log=lambda s: None, progress=False)
    assert load_bundle(out).config.training["guide"]["unet_step"] == 5
    with pytest.raises(UserError, match="--guide-of"):  # a guide for another bundle is not this run
        L.train(dataclasses.replace(cfg, guide_of=str(out), unet_max_steps=6), resume=True, log=lambda s: None, progress=False)
    with pytest.raises(UserError, match="--guide-of"):
        L.train(tiny_cfg(png, tmp_path / "g", unet=small, unet_max_steps=6), resume=True, log=lambda s: None, progress=False)
    assert main(["train", str(png), "--out", str(tmp_path / "h"), "--guide-of", str(first), "--init-from", str(first)]) == 2
    assert "--guide-of" in capsys.readouterr().err
    assert main(["train", str(png), "--out", str(tmp_path / "h"), "--guide-of", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_init_from_carries_the_bundles_guide_and_decoder_record(png: Path, tmp_path: Path) -> None:
    """Continuing a guided bundle's denoiser keeps its guide (same latents, same levels, same weight) and
    its fine-tuned decoder's record, until a decoder step retrains that decoder or the cascade changes."""
    from gigagen.models.checkpoint import save_bundle

    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    small = UNetConfig(latent_ch=2, base_ch=4, ch_mult=(1, 2), attn_lowest=False)
    g = load_bundle(L.train(tiny_cfg(png, tmp_path / "g", unet=small, guide_of=str(first), autoguidance=2.5,
                                     level_probs=(1.0, 0.0, 0.0), unet_max_steps=2), log=lambda s: None, progress=False))
    guided = tmp_path / "guided.safetensors"  # as a --decoder-of run leaves it: with a decoder_gan record
    save_bundle(guided, dataclasses.replace(g.config, training=g.config.training | {"decoder_gan": {"steps": 7}}), g.ae, g.unet, g.guide)

    def same(x: torch.nn.Module, y: torch.nn.Module) -> bool:
        return all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))

    cfg = tiny_cfg(png, tmp_path / "b", init_from=str(guided), unet_max_steps=5, decoder_every=0)
    b = load_bundle(L.train(cfg, log=lambda s: None, progress=False))
    assert not same(b.unet, g.unet) and same(b.ae, g.ae)  # the denoiser trained on, the autoencoder did not
    assert b.guide is not None and same(b.guide, g.guide)
    assert (b.config.guide, b.config.autoguidance, b.config.guide_levels) == (small, 2.5, (0,))
    rec = b.config.training
    assert rec["decoder_gan"] == {"steps": 7} and rec["unet_step"] == 5
    assert rec["guide"]["carried_from"] == guided.name and rec["guide"]["unet_step"] == 2
    b = load_bundle(L.train(dataclasses.replace(cfg, unet_max_steps=6), resume=True, log=lambda s: None, progress=False))
    assert same(b.guide, g.guide) and b.config.training["decoder_gan"] == {"steps": 7}  # kept across --resume
    # decoder steps retrain the tuned decoder: its record goes, the guide stays
    b = load_bundle(L.train(dataclasses.replace(cfg, unet_max_steps=8, decoder_every=1), resume=True, log=lambda s: None, progress=False))
    assert "decoder_gan" not in b.config.training and same(b.guide, g.guide) and not same(b.ae.decoder, g.ae.decoder)
    # another cascade: the guide's levels no longer exist as they were, so no guide
    unet5 = UNetConfig(latent_ch=2, base_ch=8, ch_mult=(1, 2), attn_lowest=False, n_levels=5)
    five = tiny_cfg(png, tmp_path / "c", init_from=str(guided), unet=unet5, magnifications=(20.0, 10.0, 5.0, 2.5, 1.25),
                    level_probs=(0.4, 0.15, 0.15, 0.15, 0.15), unet_max_steps=3, decoder_every=0)
    c = load_bundle(L.train(five, log=lambda s: None, progress=False))
    assert c.guide is None and c.config.autoguidance == 1.0 and "guide" not in c.config.training


def test_cli_guide_of_takes_cascade_and_tile_from_the_bundle(png: Path, tmp_path: Path) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    out = tmp_path / "g"
    rc = main(["train", str(png), "--out", str(out), "--guide-of", str(first), "--mpp", "0.5", "--unet-base", "4", "--unet-mult", "1,2",
               "--unet-max-steps", "2", "--unet-batch", "2", "--threads", "1", "--quiet", "--autoguidance", "1.5"])
    assert rc == 0
    a, g = read_bundle_config(first), read_bundle_config(out / "bundle.safetensors")
    assert (g.ae, g.unet, g.tile, g.magnifications) == (a.ae, a.unet, a.tile, a.magnifications)
    assert g.guide is not None and g.guide.base_ch == 4 and g.autoguidance == 1.5 and g.training["guide"]["unet_step"] == 2
    assert g.guide_levels == (0,) and g.training["guide"]["level_probs"] == [1.0, 0.0, 0.0]  # by default the finest level only


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small training image and a tiny bundle trained on it: the decoder fine-tune samples its whole
    training image in 8 orientations, so the image is small to keep these tests fast."""
    from PIL import Image

    d = tmp_path_factory.mktemp("gan")
    p = d / "he.png"
    Image.fromarray(fake_he(160, 128)).save(p)  # 128 x 128 px to train on after the held-out band
    return p, L.train(tiny_cfg(p, d / "a"), log=lambda s: None, progress=False)


def test_decoder_of_finetunes_only_the_decoder_and_resumes(small_bundle: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gigagen.train import gan_decoder as G

    png, first = small_bundle
    first = Path(shutil.copy(first, tmp_path / "a.safetensors"))  # this test overwrites it
    a = load_bundle(first)
    cfg = tiny_cfg(png, tmp_path / "d", decoder_of=str(first), gan_max_steps=3, gan_bank_seeds=1)
    out = G.train_decoder(cfg, log=lambda s: None, progress=False)
    d = load_bundle(out)
    # the encoder and the denoiser are the bundle's bit for bit (its latents stay valid); the decoder changed
    for mine, theirs in ((a.ae.encoder, d.ae.encoder), (a.unet, d.unet)):
        for (name, pa), pb in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.ae.decoder.state_dict().values(), d.ae.decoder.state_dict().values()))
    assert d.config.latent_scale == a.config.latent_scale and d.config.training["unet_step"] == a.config.training["unet_step"]
    rec = d.config.training["decoder_gan"]
    assert rec["steps"] == 3 and rec["decoder_of"] == first.name and rec["adv_weight"] == 0.2
    assert {r["phase"] for r in csv.DictReader(open(tmp_path / "d" / "loss.csv"))} == {"gan"}
    assert (tmp_path / "d" / "loss.png").is_file()
    # resumed, it carries on from its step count; a new run into the same directory is refused
    logs: list[str] = []
    G.train_decoder(dataclasses.replace(cfg, gan_max_steps=4), resume=True, log=logs.append, progress=False)
    assert load_bundle(out).config.training["decoder_gan"]["steps"] == 4
    assert any("read from" in m for m in logs)  # the resumed run reads its sampled bank back
    G.train_decoder(dataclasses.replace(cfg, gan_max_steps=4, gan_mix=0.0, max_minutes=0.0), resume=True, log=lambda s: None, progress=False)
    zero = load_bundle(out)  # no time for steps: the run only re-exports, with the original decoder
    assert zero.config.training["decoder_gan"]["mix"] == 0.0
    for (name, pa), pb in zip(a.ae.decoder.state_dict().items(), zero.ae.decoder.state_dict().values()):
        assert torch.equal(pa, pb), name
    with pytest.raises(UserError, match="already holds"):
        G.train_decoder(cfg, log=lambda s: None, progress=False)
    # its state is not a denoiser run's, nor a fine-tune of another bundle
    with pytest.raises(UserError, match="--decoder-of"):
        L.train(tiny_cfg(png, tmp_path / "d"), resume=True, log=lambda s: None, progress=False)
    with pytest.raises(UserError, match="--decoder-of"):
        G.train_decoder(dataclasses.replace(cfg, decoder_of=str(out)), resume=True, log=lambda s: None, progress=False)
    saved = first.read_bytes()  # the bundle changed under the run: resuming would mix with another original decoder
    first.write_bytes(out.read_bytes())
    with pytest.raises(UserError, match="is now"):
        G.train_decoder(dataclasses.replace(cfg, gan_max_steps=5), resume=True, log=lambda s: None, progress=False)
    first.write_bytes(saved)
    # the CLI: one line and exit 2 for combinations, crop sizes and a corrupt state
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--threads", "1"]
    assert main(base + ["--out", str(tmp_path / "e"), "--decoder-of", str(first), "--guide-of", str(first)]) == 2
    assert "--decoder-of" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e"), "--decoder-of", str(first), "--ae-crop", "36"]) == 2
    assert "--ae-crop" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e"), "--decoder-of", str(first), "--ae-crop", "256"]) == 2
    assert "smaller than --ae-crop 256" in capsys.readouterr().err
    (tmp_path / "d" / "state.pt").write_bytes(b"not a checkpoint")
    assert main(base + ["--out", str(tmp_path / "d"), "--decoder-of", str(first), "--resume", "--ae-crop", "32", "--ae-batch", "2"]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_decoder_bank_samples_every_orientation_deterministically(small_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    from gigagen.train import gan_decoder as G

    png, first = small_bundle
    b = load_bundle(first)
    cfg = tiny_cfg(png, tmp_path / "d", decoder_of=str(first))
    levels = L.load_training_levels(cfg)
    one = G.build_bank(b, levels, 2, torch.device("cpu"), lambda s: None, False)
    two = G.build_bank(b, levels, 2, torch.device("cpu"), lambda s: None, False, cache=tmp_path / "bank.npz")
    logs: list[str] = []
    three = G.build_bank(b, levels, 2, torch.device("cpu"), logs.append, False, cache=tmp_path / "bank.npz")
    assert "read from" in logs[0] and all(np.array_equal(p, q) for p, q in zip(two.sampled, three.sampled))
    (tmp_path / "bank.npz").write_bytes(b"damaged")  # a damaged cache is sampled again, not an error
    assert len(G.build_bank(b, levels, 1, torch.device("cpu"), lambda s: None, False, cache=tmp_path / "bank.npz").sampled) == 8
    assert len(one.sampled) == 16  # 8 orientations x 2 seeds of the one training image
    f = b.config.ae.factor
    for img, real, s in zip(one.images, one.real, one.sampled):
        assert s.shape == real.shape == (b.config.ae.latent_ch, img.shape[0] // f, img.shape[1] // f)
    assert all(np.array_equal(p, q) for p, q in zip(one.sampled, two.sampled))  # a function of the seeds
    assert not np.array_equal(one.sampled[0], one.sampled[1])  # two seeds, two samples
    assert not np.allclose(one.sampled[0], one.real[0])  # sampled from noise, not the real latent


def test_decoder_gan_step_follows_the_discriminator(small_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """The adversarial term reaches the decoder: the same step with and without it gives different decoders."""
    from gigagen.train import gan_decoder as G

    png, first = small_bundle
    b = load_bundle(first)
    f = b.config.ae.factor
    batch = (torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 2, 32 // f, 32 // f), torch.randn(2, 2, 32 // f, 32 // f),
             torch.zeros(2, dtype=torch.bool))
    outs = []
    for adv in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = tiny_cfg(png, tmp_path / "d", decoder_of=str(first), gan_adv=adv)
        st = G.new_gan_state(b, cfg, str(first))
        parts = G.gan_step(st, b.ae.decoder, batch, cfg)
        assert parts["anchor"] == pytest.approx(0.0, abs=1e-6)  # starts as the anchor decoder
        outs.append(st.decoder.state_dict())
    assert any(not torch.equal(p, q) for p, q in zip(outs[0].values(), outs[1].values()))


def test_paired_bank_entries_keep_the_layout_and_teach_reconstruction(small_bundle: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--gan-paired: SDEdit samples from the real latent join the bank, flagged; the decoder reconstructs the real
    crop from them (a loss the pure-noise samples, drawn elsewhere, cannot have)."""
    from gigagen.train import gan_decoder as G

    png, first = small_bundle
    b = load_bundle(first)
    cfg = tiny_cfg(png, tmp_path / "d", decoder_of=str(first))
    levels = L.load_training_levels(cfg)
    plain = G.build_bank(b, levels, 1, torch.device("cpu"), lambda s: None, False, cache=tmp_path / "bank.npz")
    logs: list[str] = []
    bank = G.build_bank(b, levels, 1, torch.device("cpu"), logs.append, False, cache=tmp_path / "bank.npz", paired=(200,))
    assert "read from" not in logs[0]  # another bank than the cached one: sampled, not read back
    assert len(bank.sampled) == 16 and bank.paired == [False, True] * 8
    assert all(np.array_equal(p, q) for p, q in zip(plain.sampled, bank.sampled[::2]))  # the pure-noise entries unchanged
    err = [float(np.abs(s - r).mean()) for s, r in zip(bank.sampled, bank.real)]
    assert max(err[1::2]) < min(err[::2])  # from t0 = 200 the real latent's layout survives, from pure noise it does not
    x, s, z, paired = G.bank_batch(bank, dataclasses.replace(cfg, ae_batch=8), b.config.ae.factor, b.config.latent_scale,
                                   np.random.default_rng(0))
    assert paired.dtype == torch.bool and paired.shape == (8,) and paired.any() and not paired.all()
    outs = []
    for flags in (torch.zeros(8, dtype=torch.bool), paired):
        torch.manual_seed(0)
        st = G.new_gan_state(b, cfg, str(first))
        parts = G.gan_step(st, b.ae.decoder, (x, s, z, flags), cfg)
        assert ("paired" in parts) == bool(flags.any())
        outs.append(st.decoder.state_dict())
    assert any(not torch.equal(p, q) for p, q in zip(outs[0].values(), outs[1].values()))
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--out", str(tmp_path / "e"), "--decoder-of", str(first)]
    assert main(base + ["--gan-paired", "1000"]) == 2
    assert "--gan-paired timesteps must be in 0..999" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert main(base + ["--gan-paired", "300", "--decoder-level", "1", "--decoder-noise", "4"]) == 2
    assert "--gan-paired teaches a deterministic decoder" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_ae_batch_keeps_a_coarse_level_smaller_than_8_px(tmp_path: Path) -> None:
    """A 1.25x level of a small image (6 x 8 px) is padded into the crop, not replaced by a white one."""
    li = D.build_levels(np.full((96, 128, 3), (90, 50, 140), np.uint8), (4, 4), 2)
    assert li.images[2].shape[:2] == (6, 8)
    cfg = tiny_cfg(tmp_path / "x.png", tmp_path / "r", level_probs=(0.0, 0.0, 1.0), jitter=0.0)
    x = L.ae_batch([li], cfg, np.random.default_rng(0))
    assert x.shape == (2, 3, 32, 32)
    assert (x[:, :, :6, :6] < 0.5).all() and (x[:, :, 8:, 8:] == 1).all()  # purple tissue top-left, white padding


def test_input_perturbation_noises_the_input_not_the_target() -> None:
    """Ning et al. 2023: x_t carries eps + gamma xi, the v target eps alone; gamma 0 is the plain pair."""
    x0 = torch.zeros(1, 4, 64, 64)
    a = s = torch.full((1, 1, 1, 1), 0.5**0.5)
    torch.manual_seed(0)
    xt, target = L.noised_pair(x0, a, s, 0.0)
    np.testing.assert_allclose(xt.numpy(), target.numpy(), atol=1e-6)  # x0 = 0 and a = s: both are a eps
    torch.manual_seed(0)
    xt_p, target_p = L.noised_pair(x0, a, s, 0.3)
    assert torch.equal(target_p, target)  # the same eps, and the target knows nothing of xi
    extra = (xt_p - target_p) / s  # gamma xi
    assert abs(float(extra.std()) - 0.3) < 0.02 and abs(float(extra.mean())) < 0.02


def test_cli_input_perturbation_is_recorded_and_checked(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(png), "--out", str(tmp_path / "bad"), "--input-perturbation", "2"]) == 2
    assert "--input-perturbation" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    cfg = tiny_cfg(png, tmp_path / "r", input_perturbation=0.1)
    assert read_bundle_config(L.train(cfg, log=lambda s: None, progress=False)).training["input_perturbation"] == 0.1
