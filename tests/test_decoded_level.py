"""A decoded level (BundleConfig.decoded_level, gigagen train --decoder-of B --decoder-level K): a pixel level under
the latent of its own magnification that the cascade reads off that latent with the bundle's level decoder
instead of sampling it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_bundle
from gigagen.cli import main
from gigagen.engine.decode import decode_level, read_level, to_uint8
from gigagen.engine.grid import Tiling
from gigagen.engine.levels import fold
from gigagen.engine.store import DiskStore, LevelSpec, MemoryStore
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle, read_bundle_config
from gigagen.train import loop as L
from test_pixel_levels import AE4, UNDER, UNET12
from test_train import png, tiny_cfg  # noqa: F401  (png is a fixture)

UNET4 = dataclasses.replace(UNET12, n_levels=4)
DECODED = dict(ae=AE4, unet=UNET4, magnifications=UNDER, pixel_levels=(1,), pixel_scale=2.0)


def fake_decode(z: np.ndarray) -> np.ndarray:
    """(1, 12, h, w) -> (1, 3, 8h, 8w) in [-1, 1]: each latent pixel's first three channels over 8 x 8 px."""
    return np.tanh(np.kron(z[:, :3], np.ones((8, 8), np.float32)))


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_decode_level_writes_the_folded_decoding_of_its_parent(kind: str, tmp_path: Path) -> None:
    """Every cell of the decoded level is the parent's decoding, rounded to uint8 as training's pixels are, folded
    into 2 px cells and scaled, whatever tiles it was written in (grid-shifted, unaligned to the latent); the
    level is committed at the last step, so a store reads it back and a second call changes nothing."""
    rng = np.random.default_rng(0)
    parent = rng.standard_normal((12, 8, 10)).astype(np.float32)  # 5x latent: 64 x 80 px at 5x
    spec = LevelSpec(1, (32, 40), 12, seed=3, tiling=Tiling(tile=12, divisor=4))  # 2 px cells over the same field
    store = MemoryStore(spec) if kind == "memory" else DiskStore(spec, str(tmp_path / "state"))
    counted: list[int] = []
    decode_level(store, parent, fake_decode, ae_factor=8, cell=2, scale=2.0, halo=1, n_steps=5, on_tiles=counted.append)
    want = fold(to_uint8(fake_decode(parent[None])[0]).astype(np.float32) / 127.5 - 1.0, 2) * 2.0
    got = store.view(5)[:, 0:32, 0:40]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert store.completed() == 5 and sum(counted) > 1  # several tiles
    decode_level(store, parent * 0, fake_decode, ae_factor=8, cell=2, scale=2.0, halo=1, n_steps=5)  # already done
    np.testing.assert_array_equal(store.view(5)[:, 0:32, 0:40], got)


def noisy_decode(z: np.ndarray) -> np.ndarray:
    """fake_decode of a latent plus its first three noise channels (a level decoder that samples)."""
    return np.tanh(np.kron(z[:, :3] + z[:, 12:15], np.ones((8, 8), np.float32)))


def test_a_noise_fed_level_decoder_reads_noise_of_seed_level_and_position(tmp_path: Path) -> None:
    """With noise (BundleConfig.level_decoder_noise) the decoded level written tile by tile into a disk store equals
    the whole level decoded at once with the same (seed, level) noise; another seed or level draws another level."""
    parent = np.random.default_rng(0).standard_normal((12, 8, 10)).astype(np.float32)
    spec = LevelSpec(1, (32, 40), 12, seed=3, tiling=Tiling(tile=12, divisor=4))
    store = DiskStore(spec, str(tmp_path / "state"))
    decode_level(store, parent, noisy_decode, ae_factor=8, cell=2, scale=2.0, halo=1, n_steps=5, noise=(3, 1, 4))
    whole = read_level(parent, noisy_decode, 8, (3, 1, 4))
    np.testing.assert_allclose(store.view(5)[:, 0:32, 0:40], fold(whole.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0, 2) * 2.0,
                               atol=1e-6)
    plain = read_level(parent, fake_decode, 8)
    for other in ((4, 1, 4), (3, 0, 4)):
        assert (np.abs(read_level(parent, noisy_decode, 8, other).astype(int) - whole).mean() > 10)
    assert np.abs(whole.astype(int) - plain).mean() > 10  # the noise is read, not ignored


def test_bundle_config_checks_the_decoded_level(tmp_path: Path) -> None:
    b = load_bundle(make_bundle(tmp_path / "d.safetensors", decoded_level=1, **DECODED))
    assert b.config.decoded_level == 1 and b.level_decoder is not None
    assert not torch.equal(b.level_decoder.stem.weight, b.ae.decoder.stem.weight)  # its own weights, read back
    for bad in (0, 2):  # the finest latent; the 5x latent itself (not a pixel level)
        with pytest.raises(ValueError, match="decoded_level"):
            make_bundle(tmp_path / "bad.safetensors", decoded_level=bad, **DECODED)
    with pytest.raises(ValueError, match="level_decoder_noise"):  # noise for a level decoder it does not have
        make_bundle(tmp_path / "bad.safetensors", level_decoder_noise=4, **DECODED)
    n = load_bundle(make_bundle(tmp_path / "n.safetensors", decoded_level=1, level_decoder_noise=4, **DECODED))
    assert n.config.level_noise(9) == (9, 1, 4) and b.config.level_noise(9) is None
    assert n.level_decoder.stem.in_channels == 12 + 4 and n.ae.decoder.stem.in_channels == 12
    with pytest.raises(ValueError, match="decoded_level"):  # pixels under a coarser latent, not their own
        make_bundle(tmp_path / "bad.safetensors", decoded_level=1, ae=AE4, unet=UNET12, pixel_levels=(1,), pixel_scale=2.0)
    # a file naming a decoded level without the level decoder's tensors is refused in one line
    from safetensors.torch import load_file, save_file

    plain = make_bundle(tmp_path / "plain.safetensors", **DECODED)
    meta = json.loads(read_bundle_config(plain).to_json())
    meta["decoded_level"] = 1
    save_file(load_file(str(plain)), str(tmp_path / "half.safetensors"), metadata={"gigagen.bundle": json.dumps(meta)})
    with pytest.raises(UserError, match="does not match its configuration"):
        load_bundle(tmp_path / "half.safetensors")


def _slide(checkpoint: Path, out: Path, *extra: str) -> dict:
    assert main(["slide", "--size", "256", "--steps", "2", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet", "--seed", "5",
                 "--formats", "none", *extra]) == 0
    return json.loads((out / "run.json").read_text())


def test_slide_reads_the_decoded_level_off_its_latent_and_samples_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the same bundle that samples its 5x pixels: the denoiser evaluates exactly the other levels' pixels
    (the --plan estimate too), the level decoder's weights reach the slide, and run.json says who made each level."""
    import zarr

    sampled = make_bundle(tmp_path / "s.safetensors", **DECODED)
    decoded = make_bundle(tmp_path / "d.safetensors", decoded_level=1, **DECODED)
    other = make_bundle(tmp_path / "o.safetensors", decoded_level=1, **DECODED)
    b_dec, b_oth = load_bundle(decoded), load_bundle(other)
    assert torch.equal(b_dec.unet.out.weight, b_oth.unet.out.weight)  # the same seed: only the level decoder differs
    with torch.no_grad():
        for p in b_oth.level_decoder.parameters():
            p.add_(0.1)
    from gigagen.models.checkpoint import save_bundle

    save_bundle(other, b_oth.config, b_oth.ae, b_oth.unet, level_decoder=b_oth.level_decoder)
    rs, rd = _slide(sampled, tmp_path / "s"), _slide(decoded, tmp_path / "d")
    level1 = 2 * 32 * 32  # the 5x pixel level's cells times steps (one tile per step at 256 px)
    ns, nd = rs["network_evaluations"], rd["network_evaluations"]
    assert ns["unet_latent_pixels"] - nd["unet_latent_pixels"] == level1
    assert nd["decode_calls"] > ns["decode_calls"]
    assert [lv["made_by"] for lv in rd["levels"]] == ["denoiser", "level decoder", "denoiser", "denoiser"]
    assert [lv["made_by"] for lv in rs["levels"]] == ["denoiser"] * 4
    capsys.readouterr()
    assert main(["slide", "--size", "256", "--steps", "2", "--checkpoint", str(decoded), "--plan"]) == 0
    assert "5x pixels 32x32 (decoded), 5x latent" in capsys.readouterr().out
    assert main(["slide", "--size", "256", "--steps", "2", "--checkpoint", str(decoded), "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["network_evaluations"]["unet_latent_pixels"] == nd["unet_latent_pixels"]
    px = [zarr.open_group(str(tmp_path / n / "slide.ome.zarr"), mode="r")["0"][:] for n in ("d",)]
    _slide(other, tmp_path / "o")
    px.append(zarr.open_group(str(tmp_path / "o" / "slide.ome.zarr"), mode="r")["0"][:])
    assert not np.array_equal(px[0], px[1])  # the 20x level is conditioned on what the level decoder drew
    # on disk (per-tile latent files) the same slide, pixel for pixel
    _slide(decoded, tmp_path / "disk", "--memory-budget", "1KiB")
    assert json.loads((tmp_path / "disk" / "run.json").read_text())["latent_store"] == "disk"
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "disk" / "slide.ome.zarr"), mode="r")["0"][:], px[0])


GAN_BASE = ["--mpp", "0.5", "--quiet", "--threads", "1", "--ae-crop", "16", "--ae-batch", "2",
            "--gan-anchor-px", "4", "--gan-bank-seeds", "1", "--gan-max-steps", "2", "--gan-mix", "1"]


def _trained_under(png: Path, out: Path) -> Path:
    """A tiny trained bundle of the 20, 5 px, 5, 1.25x cascade."""
    return L.train(tiny_cfg(png, out, ae=AE4, unet=UNET4, pixel_levels=(1,), magnifications=UNDER,
                            level_probs=(0.4, 0.2, 0.2, 0.2), holdout_frac=0.25, decoder_every=0, tile=8, layout_tile=2),
                   log=lambda s: None, progress=False)


def test_decoder_of_with_decoder_level_tunes_a_level_decoder(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """The run's bundle is the trained bundle with a level decoder for level 1 (started from the autoencoder's
    decoder), its autoencoder and denoiser untouched; it makes a slide; bad levels are one line, exit 2."""
    first = _trained_under(png, tmp_path / "a")
    base = ["train", str(png), *GAN_BASE]
    assert main(base + ["--out", str(tmp_path / "d"), "--decoder-of", str(first), "--decoder-level", "1"]) == 0
    a, d = load_bundle(first), load_bundle(tmp_path / "d" / "bundle.safetensors")
    assert d.config.decoded_level == 1 and d.config.training["level_decoder_gan"]["level"] == 1
    assert "decoder_gan" not in d.config.training
    for x, y in ((a.ae, d.ae), (a.unet, d.unet)):
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    assert d.level_decoder is not None and not torch.equal(d.level_decoder.stem.weight, a.ae.decoder.stem.weight)
    rec = _slide(tmp_path / "d" / "bundle.safetensors", tmp_path / "slide")
    assert rec["levels"][1]["made_by"] == "level decoder"
    # the autoencoder's decoder tuned on the decoded bundle keeps its level decoder
    assert main(base + ["--out", str(tmp_path / "e"), "--decoder-of", str(tmp_path / "d" / "bundle.safetensors")]) == 0
    e = load_bundle(tmp_path / "e" / "bundle.safetensors")
    assert e.config.decoded_level == 1 and torch.equal(e.level_decoder.stem.weight, d.level_decoder.stem.weight)
    capsys.readouterr()
    for flags, says in ((["--decoder-level", "2"], "--decoder-level 2"), (["--decoder-level", "0"], "--decoder-level 0"),
                        (["--decoder-level", "1", "--decoder-refine", "8"], "--decoder-level"),
                        (["--decoder-refine", "8"], "refiner")):
        src = str(tmp_path / "d" / "bundle.safetensors") if flags == ["--decoder-refine", "8"] else str(first)
        assert main(base + ["--out", str(tmp_path / "f"), "--decoder-of", src, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert main(base + ["--out", str(tmp_path / "f"), "--decoder-level", "1"]) == 2  # needs --decoder-of
    assert "--decoder-of" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_decoder_noise_tunes_a_level_decoder_that_samples(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """--decoder-noise N: the level decoder reads N noise channels, trained (a conditional VAE-GAN, its KL logged) from
    zero weights in the bundle's decoder to weights it hears; a slide draws its decoded level from them, the same pixels
    on disk as in memory; bad uses and a resume with other noise are one line, exit 2, the bundle untouched; a resume
    with the same noise goes on."""
    from gigagen.models.checkpoint import save_bundle
    from test_resume import _pixels

    first = _trained_under(png, tmp_path / "a")
    base = ["train", str(png), *GAN_BASE]
    tuned = ["--decoder-of", str(first), "--decoder-level", "1"]
    assert main(base + ["--out", str(tmp_path / "d"), *tuned, "--decoder-noise", "4"]) == 0
    path = tmp_path / "d" / "bundle.safetensors"
    d = load_bundle(path)
    assert d.config.level_decoder_noise == 4 and d.config.training["level_decoder_gan"]["noise_ch"] == 4
    assert d.level_decoder.stem.weight[:, 12:].abs().min() > 0  # it hears every noise channel
    assert '""kl""' in (tmp_path / "d" / "loss.csv").read_text().splitlines()[-1]
    assert d.config.training["level_decoder_gan"]["kl_weight"] == 0.05
    assert _slide(path, tmp_path / "s1")["levels"][1]["made_by"] == "level decoder with 4 noise channels"
    with torch.no_grad():
        d.level_decoder.stem.weight[:, 12:] = 0
    save_bundle(tmp_path / "deaf.safetensors", d.config, d.ae, d.unet, level_decoder=d.level_decoder)
    _slide(tmp_path / "deaf.safetensors", tmp_path / "s2")
    assert any((a != b).any() for a, b in zip(_pixels(tmp_path / "s1"), _pixels(tmp_path / "s2")))  # the noise reaches the slide
    _slide(path, tmp_path / "s3", "--memory-budget", "1KiB")
    for a, b in zip(_pixels(tmp_path / "s1"), _pixels(tmp_path / "s3"), strict=True):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    before = path.read_bytes()
    for flags, says in ((["--out", str(tmp_path / "f"), "--decoder-of", str(first), "--decoder-noise", "4"], "--decoder-level"),
                        (["--out", str(tmp_path / "f"), *tuned, "--decoder-noise", "-1"], "--decoder-noise"),
                        (["--out", str(tmp_path / "f"), "--init-from", str(path), "--decoded-parents", "--level-probs", "0.5,0,0.3,0.2"],
                         "samples"),
                        (["--out", str(tmp_path / "d"), *tuned, "--resume"], "--decoder-noise 4")):
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "f").exists() and path.read_bytes() == before
    # a resume with the same noise continues the decoder and its posterior encoder
    assert main(base + ["--out", str(tmp_path / "d"), *tuned, "--decoder-noise", "4", "--resume", "--gan-max-steps", "3"]) == 0
    assert load_bundle(path).config.training["level_decoder_gan"]["steps"] == 3


def test_decoded_parents_train_the_level_below_on_the_level_decoders_reading(png: Path, tmp_path: Path,  # noqa: F811
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--decoded-parents: level 1's pixels are the level decoder's reading of the real level-2 latent, exactly as a
    slide's decoded level (within 1/255), for training and validation alike; the run keeps the level decoder bit for
    bit; bad uses are one line, exit 2, nothing written; a resume must say --decoded-parents again."""
    from PIL import Image

    from gigagen.engine.levels import unfold
    from gigagen.models.denoiser import BundleRunner

    first = _trained_under(png, tmp_path / "a")
    assert main(["train", str(png), *GAN_BASE, "--out", str(tmp_path / "d"), "--decoder-of", str(first), "--decoder-level", "1"]) == 0
    decoded = tmp_path / "d" / "bundle.safetensors"
    d = load_bundle(decoded)
    cfg = tiny_cfg(png, tmp_path / "x", ae=AE4, unet=UNET4, pixel_levels=(1,), magnifications=UNDER, tile=8, layout_tile=2,
                   level_probs=(0.5, 0.0, 0.3, 0.2), init_from=str(decoded), decoded_parents=True)
    st = L.new_state(cfg, torch.device("cpu"))
    L.init_from_bundle(st, decoded, cfg, torch.device("cpu"))
    level, reader = L.parent_reread(st, cfg, None, torch.device("cpu"))
    assert level == 1
    rgb = np.asarray(Image.open(png).convert("RGB"))[:64, :96]
    runner = BundleRunner(d, torch.device("cpu"), torch.bfloat16)
    want = to_uint8(runner.level_decode_fn(L.level_array(d, rgb, 2)[None])[0].transpose(1, 2, 0))
    got = reader(rgb)
    assert np.abs(got.astype(int) - want).max() <= 1 and np.abs(got.astype(int) - rgb).mean() > 1  # not the real pixels
    levels = L.D.build_levels(rgb, (4, 1, 4), 1)
    ls = L.encode_all([levels], st.ae_ema, cfg, torch.device("cpu"), torch.bfloat16, lambda _: None, orientations=1,
                      reread=(1, lambda im, _finest: 255 - im))
    np.testing.assert_allclose(unfold(ls.latents[0][1], 2), L.D.to_tensor_range(255 - levels.images[1]), atol=1e-6)

    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--threads", "1", "--unet-batch", "2", "--unet-max-steps", "5",
            "--decoder-every", "0", "--holdout-frac", "0.25"]
    assert main(base + ["--out", str(tmp_path / "p"), "--init-from", str(decoded), "--decoded-parents", "--level-probs", "0.5,0,0.3,0.2"]) == 0
    p = load_bundle(tmp_path / "p" / "bundle.safetensors")
    assert p.config.decoded_level == 1 and p.config.training["decoded_parents"] is True
    assert p.config.training["level_decoder_gan"] == d.config.training["level_decoder_gan"]
    for (name, x), y in zip(d.level_decoder.state_dict().items(), p.level_decoder.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(p.unet.out.weight, d.unet.out.weight)  # the denoiser trained on
    assert _slide(tmp_path / "p" / "bundle.safetensors", tmp_path / "slide")["levels"][1]["made_by"] == "level decoder"
    # a guide learns from what its denoiser learned from: decoded parents for p, the real pixels for d
    assert L.parent_reread(st, cfg, p, torch.device("cpu"))[0] == 1 and L.parent_reread(st, cfg, d, torch.device("cpu")) is None
    assert main(base + ["--out", str(tmp_path / "g"), "--guide-of", str(tmp_path / "p" / "bundle.safetensors"), "--unet-base", "4",
                        "--unet-mult", "1,2", "--level-probs", "1,0,0,0"]) == 0
    g = load_bundle(tmp_path / "g" / "bundle.safetensors")
    assert g.guide is not None and g.config.decoded_level == 1 and torch.equal(g.level_decoder.stem.weight, p.level_decoder.stem.weight)
    capsys.readouterr()
    for flags, says in ((["--decoded-parents", "--level-probs", "0.5,0,0.3,0.2"], "--init-from"),
                        (["--init-from", str(first), "--decoded-parents", "--level-probs", "0.5,0,0.3,0.2"], "level decoder"),
                        (["--init-from", str(decoded), "--decoded-parents", "--level-probs", "0.4,0.1,0.3,0.2"], "share 0"),
                        (["--init-from", str(decoded), "--decoded-parents"], "share 0")):
        assert main(base + ["--out", str(tmp_path / "f"), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "f").exists()
    before = (tmp_path / "p" / "bundle.safetensors").read_bytes()
    resumed = dataclasses.replace(cfg, out=str(tmp_path / "p"), init_from=None, unet_max_steps=6, holdout_frac=0.25)
    for bad, says in ((dict(decoded_parents=False), "--decoded-parents"), (dict(level_probs=(0.4, 0.1, 0.3, 0.2)), "share 0")):
        with pytest.raises(UserError, match=says):
            L.train(dataclasses.replace(resumed, **bad), resume=True, log=lambda s: None, progress=False)
    assert (tmp_path / "p" / "bundle.safetensors").read_bytes() == before
    L.train(resumed, resume=True, log=lambda s: None, progress=False)
    q = load_bundle(tmp_path / "p" / "bundle.safetensors")
    assert q.config.training["unet_step"] == 6 and torch.equal(q.level_decoder.stem.weight, d.level_decoder.stem.weight)


@pytest.mark.parametrize("budget", ["2GiB", "0"])  # latents in memory (checkpointed) and in per-tile files
def test_a_run_killed_around_the_decoded_level_resumes_to_the_same_pixels(tmp_path: Path, budget: str) -> None:
    """SIGKILL while the 5x latent is sampled, right after the level decoder wrote the 5x pixels, and while the 20x
    level is sampled: the resumed slide equals an uninterrupted one pixel for pixel."""
    from test_resume import _cmd, _completed, _kill_when, _pixels

    bundle = make_bundle(tmp_path / "d.safetensors", decoded_level=1, **DECODED)
    ref, out = tmp_path / "ref", tmp_path / "slide"
    subprocess.run(_cmd(bundle, ref), check=True)
    cmd = _cmd(bundle, out, "--memory-budget", budget)
    _kill_when(cmd, lambda: _completed(out, 2) >= 2)
    _kill_when(cmd + ["--resume"], lambda: _completed(out, 1) >= 1)  # the decoded level commits all its steps at once
    _kill_when(cmd + ["--resume"], lambda: _completed(out, 0) >= 2)
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for got, want in zip(_pixels(out), _pixels(ref), strict=True):
        np.testing.assert_array_equal(got, want)
    assert [lv["made_by"] for lv in json.loads((out / "run.json").read_text())["levels"]][1] == "level decoder"


def test_nucleus_stamps_mark_the_real_nuclei_in_training_and_sampled_ones_in_a_slide(png: Path, tmp_path: Path,  # noqa: F811
                                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--nucleus-stamps: the reading the level below learns from has a black stamp at each real nucleus (found at
    the finest level), the bundle records the fitted stamps, a slide paints sampled ones (its 20x level differs
    from the same bundle's without stamps); bad uses are one line and exit 2; a resume must keep the flag."""
    from PIL import Image

    from gigagen.engine.nuclei import MARKER
    from gigagen.train.metrics import nucleus_centres
    from gigagen.models.checkpoint import save_bundle

    first = _trained_under(png, tmp_path / "a")
    assert main(["train", str(png), *GAN_BASE, "--out", str(tmp_path / "d"), "--decoder-of", str(first), "--decoder-level", "1"]) == 0
    decoded = tmp_path / "d" / "bundle.safetensors"
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--threads", "1", "--unet-batch", "2", "--unet-max-steps", "5",
            "--decoder-every", "0", "--holdout-frac", "0.25", "--init-from", str(decoded), "--level-probs", "0.5,0,0.3,0.2"]
    assert main(base + ["--out", str(tmp_path / "p"), "--decoded-parents", "--nucleus-stamps"]) == 0
    p = load_bundle(tmp_path / "p" / "bundle.safetensors")
    spec = p.config.nucleus_stamps
    assert spec is not None and spec.colour == MARKER and spec.scale > 0 and p.config.training["nucleus_stamps"] is True

    rgb = np.asarray(Image.open(png).convert("RGB"))
    small = L.D.downsample(rgb, 4)
    plain = L.level_reader(p.ae, p.level_decoder, torch.device("cpu"))(small, rgb)
    stamped = L.level_reader(p.ae, p.level_decoder, torch.device("cpu"), spec, 4, 0.5)(small, rgb)
    centres = nucleus_centres(rgb, 0.5) / 4
    assert len(centres) > 10
    at = stamped[centres[:, 0].astype(int), centres[:, 1].astype(int)].astype(int)
    assert (at.sum(axis=1) < 60).all()  # black at every real nucleus
    changed = (stamped != plain).any(axis=2)
    assert changed.sum() <= len(centres) * 16  # and nowhere far from one

    with_stamps = _slide(tmp_path / "p" / "bundle.safetensors", tmp_path / "s1")
    assert with_stamps["levels"][1]["made_by"] == "level decoder with nucleus stamps"
    save_bundle(tmp_path / "n.safetensors", dataclasses.replace(p.config, nucleus_stamps=None), p.ae, p.unet, p.guide, p.level_decoder)
    assert _slide(tmp_path / "n.safetensors", tmp_path / "s2")["levels"][1]["made_by"] == "level decoder"
    from test_resume import _pixels

    assert any((a != b).any() for a, b in zip(_pixels(tmp_path / "s1"), _pixels(tmp_path / "s2")))

    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "f"), "--nucleus-stamps"]) == 2
    err = capsys.readouterr().err
    assert "--decoded-parents" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "f").exists()
    cfg = tiny_cfg(png, tmp_path / "p", ae=AE4, unet=UNET4, pixel_levels=(1,), magnifications=UNDER, tile=8, layout_tile=2,
                   level_probs=(0.5, 0.0, 0.3, 0.2), decoded_parents=True, unet_max_steps=6, holdout_frac=0.25)
    before = (tmp_path / "p" / "bundle.safetensors").read_bytes()
    with pytest.raises(UserError, match="--nucleus-stamps"):
        L.train(cfg, resume=True, log=lambda s: None, progress=False)
    assert (tmp_path / "p" / "bundle.safetensors").read_bytes() == before
