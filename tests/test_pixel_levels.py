"""Pixel levels (gigagen train --pixel-levels): a cascade level held as pixels folded into cells instead of latents."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_bundle
from gigagen.cli import main
from gigagen.engine.cascade import plan_cascade
from gigagen.engine.condition import cond_for_region
from gigagen.engine.levels import cond_factors, fold, level_cells, pixel_cell, unfold
from gigagen.models.checkpoint import load_bundle, read_bundle_config
from gigagen.models.unet import UNetConfig
from gigagen.models.vae import AutoencoderConfig
from gigagen.train import data as D
from gigagen.train import loop as L
from test_train import png, tiny_cfg  # noqa: F401  (png is a fixture)

AE12 = AutoencoderConfig(base_ch=4, ch_mult=(1, 2), latent_ch=12)  # factor 2: pixel cells of 2 px are the latent's grid too
UNET12 = UNetConfig(latent_ch=12, base_ch=8, ch_mult=(1, 2), attn_lowest=False)


def test_fold_is_pixel_unshuffle_and_unfold_inverts_it() -> None:
    x = np.random.default_rng(0).standard_normal((3, 8, 12)).astype(np.float32)
    folded = fold(x, 2)
    np.testing.assert_array_equal(folded, F.pixel_unshuffle(torch.from_numpy(x)[None], 2)[0].numpy())
    np.testing.assert_array_equal(unfold(folded, 2), x)
    assert folded[:, 1, 2].tolist() == x[:, 2:4, 4:6].reshape(3, 4).reshape(-1).tolist()  # one cell = one 2x2 block


def test_cells_and_parent_factors_of_a_5x_pixel_level() -> None:
    """20x latent (8 px cells), 5x pixels (2 px cells), 1.25x latent: the 5x level lies on the 20x latent's
    grid (one cell each, no upsampling), and one 1.25x latent pixel covers 16 x 16 5x cells."""
    cells = level_cells(8, 12, 3, (1,))
    assert cells == (8, 2, 8) and level_cells(8, 12, 3, ()) == (8, 8, 8)
    assert cond_factors((20.0, 5.0, 1.25), cells) == (1, 16, 0)
    assert cond_factors((20.0, 5.0, 1.25), (8, 8, 8)) == (4, 4, 0)
    plans = plan_cascade(4096, 1000, cells, (20.0, 5.0, 1.25), 4)
    assert [p.shape for p in plans] == [(128, 512), (128, 512), (8, 32)] and [p.factor for p in plans] == [1, 16, 0]
    # a parent cell must cover whole child cells: pixel 5x under a factor-2 zoom would cover half a 20x latent pixel
    with pytest.raises(ValueError, match="whole cells"):
        cond_factors((20.0, 10.0, 5.0), (8, 2, 8))
    for bad in ((0,), (2,), (1, 1)):
        with pytest.raises(ValueError, match="intermediate"):
            level_cells(8, 12, 3, bad)
    with pytest.raises(ValueError, match="3 c"):
        pixel_cell(8)


def test_level_zero_is_conditioned_on_its_pixel_parent_cell_for_cell() -> None:
    """At factor 1 the conditioning is the parent array itself over the tile's cells (no interpolation)."""
    parent = np.random.default_rng(1).standard_normal((12, 16, 20)).astype(np.float32)
    np.testing.assert_array_equal(cond_for_region(parent, 3, 11, 5, 17, 1), parent[:, 3:11, 5:17])


def test_bundle_config_checks_pixel_levels(tmp_path: Path) -> None:
    from gigagen.errors import UserError

    ok = make_bundle(tmp_path / "ok.safetensors", ae=AE12, unet=UNET12,
                     pixel_levels=(1,), pixel_scale=2.0)
    c = read_bundle_config(ok)
    assert c.level_cells == (2, 2, 2) and c.parent_factors == (4, 4, 0) and c.level_scales == (1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="intermediate"):
        make_bundle(tmp_path / "bad.safetensors", ae=AE12, unet=UNET12, pixel_levels=(0,))
    with pytest.raises(ValueError, match="3 c"):
        make_bundle(tmp_path / "bad.safetensors", pixel_levels=(1,))  # 4 latent channels: no pixel cell
    assert not (tmp_path / "bad.safetensors").exists()
    # a file whose configuration names an impossible pixel level is refused on reading, in one line
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ok), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"gigagen.bundle": meta["gigagen.bundle"].replace('"pixel_levels": [1]', '"pixel_levels": [0]')})
    with pytest.raises(UserError, match="incompatible configuration"):
        read_bundle_config(tmp_path / "bad.safetensors")


def test_training_folds_the_pixel_level_and_records_its_scale(png: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_cfg(png, tmp_path / "r", ae=AE12, unet=UNET12, pixel_levels=(1,), ae_max_steps=2, unet_max_steps=2)
    (li,) = L.load_training_levels(cfg)
    ls = L.encode_all([li], L.Autoencoder(cfg.ae), cfg, torch.device("cpu"), torch.float32, lambda s: None, orientations=2)
    np.testing.assert_array_equal(ls.latents[0][1], fold(D.to_tensor_range(li.images[1]), 2))  # orientation 0: unjittered
    assert ls.latents[0][1].shape == ls.latents[0][0].shape[:1] + tuple(s // 4 for s in ls.latents[0][0].shape[1:])
    assert ls.masks[1][1].shape == ls.latents[1][1].shape[1:]
    b = load_bundle(L.train(cfg, log=lambda s: None, progress=False))
    assert b.config.pixel_levels == (1,)
    pixels = np.concatenate([fold(D.to_tensor_range(D.dihedral(li.images[1], k)), 2).ravel() for k in range(8)])
    assert abs(b.config.pixel_scale - 1 / pixels.std()) < 0.05 / pixels.std()  # stain jitter moves it a little
    assert L.level_array(b, li.images[1], 1).shape == ls.latents[0][1].shape


def test_init_from_with_other_pixel_levels_forgets_how_parents_were_read(png: Path, tmp_path: Path) -> None:  # noqa: F811
    """A latent bundle continued with a pixel level: the stem's parent weights start at zero (the rest is
    kept), the pixel scale is measured, and the guide and guidance, tuned on the old parents, are dropped."""
    latent = load_bundle(L.train(tiny_cfg(png, tmp_path / "a", ae=AE12, unet=UNET12, guidance=(1.0, 2.0)), log=lambda s: None, progress=False))
    first = tmp_path / "a" / "bundle.safetensors"
    cfg = tiny_cfg(png, tmp_path / "b", ae=AE12, unet=UNET12, init_from=str(first), pixel_levels=(1,), unet_max_steps=3,
                   decoder_every=0)
    st = L.new_state(cfg, torch.device("cpu"))
    L.init_from_bundle(st, first, cfg, torch.device("cpu"))
    w, old = st.unet.stem.weight, latent.unet.stem.weight
    assert torch.equal(w[:, 12:], torch.zeros_like(w[:, 12:])) and torch.equal(w[:, :12], old[:, :12]) and old[:, 12:].abs().sum() > 0
    b = load_bundle(L.train(cfg, log=lambda s: None, progress=False))
    assert b.config.pixel_levels == (1,) and b.config.pixel_scale != 1.0 and b.config.guidance == ()
    same = tiny_cfg(png, tmp_path / "c", ae=AE12, unet=UNET12, init_from=str(first), unet_max_steps=3, decoder_every=0)
    st = L.new_state(same, torch.device("cpu"))
    L.init_from_bundle(st, first, same, torch.device("cpu"))
    assert torch.equal(st.unet.stem.weight, old)  # same levels: nothing forgotten


def test_slide_with_a_pixel_level_bundle(tmp_path: Path) -> None:
    """gigagen slide samples a bundle with a pixel 5x level end to end, each level on its planned grid: f8
    latents at 20x and 1.25x, 5x pixels in 2 px cells on the 20x latent's grid."""
    import json

    ae8 = AutoencoderConfig(base_ch=4, ch_mult=(1, 2, 2, 2), latent_ch=12)
    bundle = make_bundle(tmp_path / "px.safetensors", ae=ae8, unet=UNET12, pixel_levels=(1,), pixel_scale=2.0)
    out = tmp_path / "slide"
    assert main(["slide", "--size", "256", "--steps", "2", "--checkpoint", str(bundle), "--out", str(out), "--quiet", "--formats", "none"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert (out / "slide.ome.zarr").is_dir() and (out / "layout.png").is_file()
    # 256 px: 32^2 latent pixels at 20x, 32^2 cells of 5x pixels, 2^2 latent pixels at 1.25x; 2 steps each
    assert rec["network_evaluations"]["unet_latent_pixels"] == 2 * (32 * 32 + 32 * 32 + 2 * 2)
    assert [(lv["kind"], lv["cell_px"], lv["latent_shape"]) for lv in rec["levels"]] == [
        ("latent", 8, [32, 32]), ("pixels", 2, [32, 32]), ("latent", 8, [2, 2])]


def test_cli_pixel_levels_errors_are_one_line(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    for bad in ("0", "2", "1,1"):  # the finest level, the layout level, twice the same
        assert main(["train", str(png), "--mpp", "0.5", "--out", str(tmp_path / "r"), "--pixel-levels", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "--pixel-levels" in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    # 8 latent channels have no pixel cell
    assert main(["train", str(png), "--mpp", "0.5", "--out", str(tmp_path / "r"), "--latent-ch", "8", "--pixel-levels", "1"]) == 2
    assert "3 c" in capsys.readouterr().err and not (tmp_path / "r").exists()


AE4 = AutoencoderConfig(base_ch=4, ch_mult=(1, 2, 2), latent_ch=12)  # factor 4: a latent cell covers 2 x 2 pixel cells
UNDER = (20.0, 5.0, 5.0, 1.25)  # 5x pixels under the 5x latent


def test_a_pixel_level_under_the_latent_of_its_own_magnification() -> None:
    """5x latent -> 5x pixels -> 20x latent: the repeated magnification is allowed only as pixels under a latent."""
    cells = level_cells(8, 12, 4, (1,))
    assert cells == (8, 2, 8, 8) and cond_factors(UNDER, cells) == (1, 4, 4, 0)
    assert [p.shape for p in plan_cascade(256, 256, cells, UNDER, 1)] == [(32, 32), (32, 32), (8, 8), (2, 2)]
    with pytest.raises(ValueError, match="more than one"):  # two latents of one image: the second adds nothing
        cond_factors(UNDER, level_cells(8, 12, 4, ()))
    with pytest.raises(ValueError, match="whole cells"):  # a latent under the pixels it would be encoded from
        cond_factors(UNDER, level_cells(8, 12, 4, (2,)))
    li = D.build_levels(np.zeros((128, 192, 3), np.uint8), (4, 1, 4), 2)
    assert [im.shape[:2] for im in li.images] == [(128, 192), (32, 48), (32, 48), (8, 12)]
    assert li.images[1] is li.images[2] and [m.shape for m in li.masks] == [im.shape[:2] for im in li.images]
    # embeddings carried across: on a tie in magnification the level held the same way wins
    assert L.level_map(UNDER, (20.0, 5.0, 1.25), (1,), ()) == [0, 2, 3]
    assert L.level_map((20.0, 5.0, 1.25), UNDER, (1,), (1,)) == [0, 1, 1, 2]


def test_init_from_a_pixel_bundle_into_a_pixel_level_under_a_latent(png: Path, tmp_path: Path) -> None:  # noqa: F811
    """A 20x / 5x pixels / 1.25x bundle continued as 20x / 5x pixels / 5x latent / 1.25x: every parent is held as
    before, so nothing is forgotten and the pixel scale is kept; the new level trains and a slide samples it."""
    import json

    kw = dict(ae=AE4, unet=UNET12, pixel_levels=(1,), decoder_every=0, tile=8, layout_tile=2)
    first = L.train(tiny_cfg(png, tmp_path / "a", **kw), log=lambda s: None, progress=False)
    old = load_bundle(first)
    logs: list[str] = []
    cfg = tiny_cfg(png, tmp_path / "b", **(kw | dict(unet=dataclasses.replace(UNET12, n_levels=4))),
                   magnifications=UNDER, init_from=str(first), holdout_frac=0.25)
    st = L.new_state(cfg, torch.device("cpu"))
    L.init_from_bundle(st, first, cfg, torch.device("cpu"))
    assert torch.equal(st.unet.stem.weight, old.unet.stem.weight) and st.pixel_scale == old.config.pixel_scale
    assert torch.equal(st.unet.level_emb.weight[2], old.unet.level_emb.weight[1])  # 5x latent from the 5x level
    b = load_bundle(L.train(cfg, log=logs.append, progress=False))
    assert b.config.magnifications == UNDER and b.config.parent_factors == (2, 2, 4, 0)
    assert any("5x pixels" in s and "held 5x " in s for s in logs)  # validation names both 5x levels apart
    # from a latent bundle the 20x level's parent turns into pixels: the stem's parent weights are forgotten
    latent = L.train(tiny_cfg(png, tmp_path / "c", ae=AE4, unet=UNET12, decoder_every=0, tile=8, layout_tile=2),
                     log=lambda s: None, progress=False)
    st = L.new_state(cfg, torch.device("cpu"))
    L.init_from_bundle(st, latent, cfg, torch.device("cpu"))
    assert st.unet.stem.weight[:, 12:].abs().sum() == 0
    out = tmp_path / "slide"
    assert main(["slide", "--size", "256", "--steps", "2", "--checkpoint", str(tmp_path / "b" / "bundle.safetensors"),
                 "--out", str(out), "--quiet", "--formats", "none"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert [(lv["magnification"], lv["kind"], lv["latent_shape"]) for lv in rec["levels"]] == [
        (20.0, "latent", [64, 64]), (5.0, "pixels", [32, 32]), (5.0, "latent", [16, 16]), (1.25, "latent", [4, 4])]
    assert {"level3_1.25x", "level2_5x", "level1_5x", "level0_20x"} <= set(rec["timings_s"])  # one entry per level
