"""Exemplar synthesis (engine.exemplar, BundleConfig.exemplar, scripts/make_exemplar_bundle.py): a decoded pixel level
whose pixels are copied from an exemplar of real pixels, guided by the level decoder's reading of the latent."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_bundle, tiny_slide
from gigagen.engine.decode import decode_level, exemplar_region, read_level
from gigagen.engine.exemplar import ExemplarSpec, _paste, _seams, build_bank, synthesize
from gigagen.engine.grid import Tile, Tiling
from gigagen.engine.levels import fold
from gigagen.engine.store import DiskStore, LevelSpec
from gigagen.models.checkpoint import load_bundle, read_bundle_config, save_like
from gigagen.train import data as D
from test_decoded_level import DECODED, fake_decode
from test_train import png  # noqa: F401  (png is a fixture)

ROOT = Path(__file__).resolve().parents[1]
F8 = 8


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """An (h, w, 3) uint8 image of smoothed noise: no two patches alike, yet smooth enough that a patch shifted by a
    pixel or two is a near match, so the seeded jitter wins often (about a fifth of the pixels differ by seed)."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).uniform(0, 255, (h, w, 3)), (1.5, 1.5, 0))
    return ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


def block_encode(rgb: np.ndarray) -> np.ndarray:
    """A fake encoder for factor 8: each 8 x 8 cell's mean colour and its mean in four quadrants -> (12, h/8, w/8)."""
    x = rgb.astype(np.float32) / 127.5 - 1.0
    h, w = x.shape[0] // F8, x.shape[1] // F8
    quads = x.reshape(h, 2, 4, w, 2, 4, 3).mean((2, 5))  # (h, 2, w, 2, 3)
    return quads.transpose(1, 3, 4, 0, 2).reshape(12, h, w)


@pytest.fixture(scope="module")
def bank_and_image():
    img = textured(96, 80, 0)
    return build_bank(img, block_encode, fake_decode, F8), img


def test_the_exemplar_read_back_is_the_exemplar(bank_and_image) -> None:
    """Given the exemplar's own latent and guide, every patch finds itself (distance 0) and keeps it: the output is
    the exemplar, pixel for pixel. A wrong offset, gather or paste anywhere would show here."""
    bank, img = bank_and_image
    z = block_encode(img)
    guide = read_level(z, fake_decode, F8)
    out = synthesize(bank, z, guide, ExemplarSpec(96, 80, patch=16, overlap=8), seed=1, level=1)  # the grid fits exactly
    np.testing.assert_array_equal(out, img)


def test_every_pixel_is_copied_from_the_exemplar_and_the_seed_matters(bank_and_image) -> None:
    """From another image's latent every output pixel is one of the exemplar's colours (copied, never blended), the
    same seed gives the same pixels, and another seed (other first picks among the near matches) changes some of them."""
    bank, img = bank_and_image
    z = block_encode(textured(64, 72, 5))
    guide = read_level(z, fake_decode, F8)
    spec = ExemplarSpec(96, 80, patch=16, overlap=4, iters=3, tolerance=0.5)
    a = synthesize(bank, z, guide, spec, seed=1, level=1)
    assert a.shape == (64, 72, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in a.reshape(-1, 3))
    np.testing.assert_array_equal(synthesize(bank, z, guide, spec, seed=1, level=1), a)
    assert (synthesize(bank, z, guide, spec, seed=2, level=1) != a).any(-1).mean() > 0.05


def test_the_seam_follows_where_two_patches_agree() -> None:
    """The minimum-error cut through a shared strip takes the zero-error path wherever it wanders (one column a
    row at most), and the paste cuts the right-hand patch along it."""
    rng = np.random.default_rng(0)
    path = np.clip(np.cumsum(rng.integers(-1, 2, 32)) + 4, 0, 7)  # steps of -1, 0, 1, kept in the strip
    err = torch.from_numpy(rng.uniform(1, 2, (32, 8)))
    err[np.arange(32), path] = 0
    np.testing.assert_array_equal(_seams(err[None])[0].numpy(), path)
    a, b = torch.zeros(32, 32, 3), torch.ones(32, 32, 3)  # disagree everywhere: any seam is as good as another
    out = _paste(torch.stack([a, b])[None], 24, 8)
    cut = _seams(((a[:, 24:] - b[:, :8]) ** 2).sum(-1)[None])[0]
    for y in range(32):  # left patch up to the seam, the right patch from it on
        assert (out[y, : 24 + cut[y]] == 0).all() and (out[y, 24 + cut[y] :] == 1).all()


@pytest.mark.parametrize("iters", [0, 2])
def test_a_tile_with_its_halo_equals_the_untiled_level(bank_and_image, iters: int) -> None:
    """exemplar_region of any tile, aligned to the latent or not (the guide decoded there with the decoder's halo), equals the same window
    of the whole level synthesised at once: choices depend only on a bounded neighbourhood and global positions."""
    bank, _ = bank_and_image
    spec = ExemplarSpec(96, 80, patch=16, overlap=4, iters=iters, tolerance=0.5)
    assert spec.halo(F8) <= 96  # the level is wide enough that a tile's context is a part of it
    z = block_encode(textured(336, 320, 7))
    whole = synthesize(bank, z, read_level(z, fake_decode, F8), spec, seed=3, level=1)
    for tile in (Tile(0, 48, 0, 40), Tile(152, 216, 128, 200), Tile(288, 336, 8, 96), Tile(140, 190, 132, 270)):  # last: unaligned
        got = exemplar_region(z, fake_decode, F8, tile, 1, bank, spec, 3, 1).transpose(1, 2, 0)
        np.testing.assert_array_equal(got, whole[tile.y0 : tile.y1, tile.x0 : tile.x1])


@pytest.mark.parametrize("group", [1024, 32])
def test_decode_level_writes_the_exemplar_level_in_any_tiles(bank_and_image, tmp_path: Path, group: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoded level written into a disk store (grid-shifted tiles, synthesised a group of tiles at a time,
    one group or several) is the folded, scaled whole-level synthesis."""
    import gigagen.engine.decode as decode

    monkeypatch.setattr(decode, "EXEMPLAR_GROUP_PX", group)
    bank, _ = bank_and_image
    spec = ExemplarSpec(96, 80, iters=2)
    parent = block_encode(textured(64, 80, 9))  # 8 x 10 latent cells
    store = DiskStore(LevelSpec(1, (32, 40), 12, seed=3, tiling=Tiling(tile=12, divisor=4)), str(tmp_path / "state"))
    decode_level(store, parent, fake_decode, ae_factor=F8, cell=2, scale=2.0, halo=1, n_steps=5, exemplar=(bank, spec, 3, 1))
    whole = synthesize(bank, parent, read_level(parent, fake_decode, F8), spec, seed=3, level=1)
    want = fold(whole.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0, 2) * 2.0
    np.testing.assert_allclose(store.view(5)[:, 0:32, 0:40], want, atol=1e-6)


def test_bundle_config_checks_the_exemplar(tmp_path: Path) -> None:
    b = load_bundle(make_bundle(tmp_path / "d.safetensors", decoded_level=1, **DECODED))
    for bad in (dict(decoded_level=None), dict(exemplar=ExemplarSpec(64, 64, patch=16, overlap=9)),
                dict(exemplar=ExemplarSpec(64, 64, guide_pool=5)), dict(exemplar=ExemplarSpec(8, 64)),
                dict(level_decoder_noise=2)):
        fields = dict(exemplar=ExemplarSpec(64, 64)) | bad
        with pytest.raises(ValueError):
            save_like(tmp_path / "x.safetensors", b, dataclasses.replace(b.config, **fields))
    with pytest.raises(ValueError, match="exemplar pixels are saved exactly"):
        save_like(tmp_path / "x.safetensors", b, dataclasses.replace(b.config, exemplar=ExemplarSpec(64, 64)))
    assert not (tmp_path / "x.safetensors").exists()


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "make_exemplar_bundle.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_make_exemplar_bundle_and_slide(png: Path, tmp_path: Path) -> None:  # noqa: F811
    """The script writes a bundle whose level 1 is synthesised from the region's training part at 5x (never its
    held-out band), with the autoencoder's decoder as level decoder; a slide made with it says so in run.json,
    and its 5x pixels differ from the plain level decoder's reading."""
    src = make_bundle(tmp_path / "px.safetensors", **DECODED)
    out = tmp_path / "ex.safetensors"
    r = run_script(str(src), "--region", str(png), "--mpp", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    b = load_bundle(out)
    c = b.config
    assert c.decoded_level == 1 and c.exemplar is not None and c.training["exemplar"]["level"] == 1
    assert (c.exemplar.patch, c.exemplar.overlap) == (48, 12)  # the defaults the shipped bundle was measured with
    # the training part of the region at 5x, box-downsampled, cut to whole 5x latent cells (16 px at 20x)
    region = np.asarray(Image.open(png).convert("RGB"))
    train_rows = len(D.split_holdout(region, 0.2)[0])
    h, w = c.exemplar.height, c.exemplar.width
    assert (h, w) == tuple(b.exemplar.pixels.shape[:2]) and w == 384 // 4 and h == train_rows // 16 * 4 < 102
    want = region[: 4 * h, : 4 * w].reshape(h, 4, w, 4, 3).mean((1, 3))
    assert np.abs(b.exemplar.pixels.numpy().astype(float) - want).max() <= 1.0  # box-downsampled, rounded
    for k, v in b.level_decoder.state_dict().items():
        assert (v == b.ae.decoder.state_dict()[k]).all()
    made, px = tiny_slide(out, tmp_path / "slide")
    assert made[1].startswith("exemplar synthesis") and made[0] == "denoiser"
    run = json.loads((tmp_path / "slide" / "run.json").read_text())
    assert run["levels"][1]["made_by"] == made[1]
    assert px.shape == (256, 256, 3)


@pytest.fixture(scope="module")
def exemplar_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(region PNG, an exemplar bundle made of it)."""
    from test_train import fake_he

    d = tmp_path_factory.mktemp("exemplar")
    region = d / "he.png"
    Image.fromarray(fake_he()).save(region)
    out = d / "ex.safetensors"
    r = run_script(str(make_bundle(d / "px.safetensors", **DECODED)), "--region", str(region), "--mpp", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return region, out


@pytest.mark.parametrize("flag", ["--init-from", "--guide-of", "--decoder-of"])
def test_runs_that_would_drop_the_exemplar_are_refused(exemplar_bundle: tuple[Path, Path], flag: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A training run exports a bundle of its own networks and would lose the exemplar (keeping a plain copy of the
    autoencoder's decoder as level decoder): refused before anything is written, one line, exit code 2."""
    from gigagen.cli import main

    region, bundle = exemplar_bundle
    assert main(["train", str(region), "--out", str(tmp_path / "r"), "--mpp", "0.5", flag, str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exemplar" in err and not (tmp_path / "r").exists()


def test_make_exemplar_bundle_refuses_bad_input(png: Path, tmp_path: Path) -> None:  # noqa: F811
    """One line and exit code 2: an existing --out (left untouched), a bundle without a pixel level under its latent,
    a --coarse-of bundle of another cascade, an overlap over half the patch; a valid --patch / --overlap is kept."""
    src = make_bundle(tmp_path / "px.safetensors", **DECODED)
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    r = run_script(str(src), "--region", str(png), "--mpp", "0.5", "--out", str(taken))
    assert r.returncode == 2 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert taken.read_bytes() == b"mine"
    plain = make_bundle(tmp_path / "plain.safetensors")
    r = run_script(str(plain), "--region", str(png), "--mpp", "0.5", "--out", str(tmp_path / "a.safetensors"))
    assert r.returncode == 2 and "pixel level" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_script(str(src), "--region", str(png), "--mpp", "0.5", "--coarse-of", str(plain), "--out", str(tmp_path / "b.safetensors"))
    assert r.returncode == 2 and "--coarse-of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_script(str(src), "--region", str(png), "--mpp", "0.5", "--patch", "16", "--overlap", "9", "--out", str(tmp_path / "c.safetensors"))
    assert r.returncode == 2 and "overlap" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / f"{n}.safetensors").exists() for n in "abc")
    assert read_bundle_config(src).exemplar is None
    r = run_script(str(src), "--region", str(png), "--mpp", "0.5", "--patch", "16", "--overlap", "4", "--out", str(tmp_path / "d.safetensors"))
    assert r.returncode == 0, r.stderr
    spec = read_bundle_config(tmp_path / "d.safetensors").exemplar
    assert spec is not None and (spec.patch, spec.overlap) == (16, 4)


def test_the_plan_counts_the_exemplar_synthesis(exemplar_bundle: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`gigagen slide --plan` times the synthesis (and the exemplar's preparation) on this machine, adds it to the
    total and prints it."""
    from gigagen.cli import main

    _, bundle = exemplar_bundle
    assert main(["slide", "--size", "512", "--steps", "2", "--checkpoint", str(bundle), "--plan", "--json"]) == 0
    sec = json.loads(capsys.readouterr().out)["seconds_on_this_machine"]
    assert sec["exemplar"] > 0
    assert sec["total"] == pytest.approx(sec["sampling"] + sec["decode"] + sec["exemplar"] + sec["pyramid_and_export"], abs=0.21)
    assert main(["slide", "--size", "512", "--steps", "2", "--checkpoint", str(bundle), "--plan"]) == 0
    assert "exemplar synthesis" in capsys.readouterr().out


def test_coarse_of_needs_the_same_encoder_not_the_same_decoder(tmp_path: Path) -> None:
    """--coarse-of B samples the latent levels with B's denoiser, so B must encode into the same latents (encoder
    weights and latent scale); the decoders may differ, as after `gigagen train --decoder-of`."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from set_coarse_network import same_autoencoder, same_encoder

    path = make_bundle(tmp_path / "a.safetensors")
    a, b = load_bundle(path), load_bundle(path)
    assert same_encoder(a, b) and same_autoencoder(a, b)
    with torch.no_grad():
        next(b.ae.decoder.parameters()).add_(0.1)
    assert same_encoder(a, b) and not same_autoencoder(a, b)
    with torch.no_grad():
        next(b.ae.encoder.parameters()).add_(0.1)
    assert not same_encoder(a, b)
    c = load_bundle(path)
    c.config = dataclasses.replace(c.config, latent_scale=c.config.latent_scale * 2)
    assert not same_encoder(a, c)


def test_sample_real_parent_quilts_the_real_latent_as_a_slide_does(exemplar_bundle: tuple[Path, Path]) -> None:
    """scripts/sample_real_parent.py --parent decoded gives the 20x denoiser the 5x level a slide would make from the
    real 5x latent: for an exemplar bundle that is the quilt (every pixel one of the exemplar's colours, copied), not
    the level decoder's reading of the latent, which is only the quilt's guide."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_real_parent", ROOT / "scripts" / "sample_real_parent.py")
    assert spec is not None and spec.loader is not None
    srp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(srp)
    region, path = exemplar_bundle
    bundle = load_bundle(path)
    coarse = D.downsample(np.asarray(Image.open(region).convert("RGB"))[:256, :256], 4)  # 64 x 64 px of "5x"
    px = srp.decoded_parent(bundle, coarse, seed=1)
    assert px.shape == coarse.shape and px.dtype == np.uint8
    colours = {tuple(c) for c in bundle.exemplar.pixels.numpy().reshape(-1, 3)}
    assert all(tuple(c) in colours for c in px.reshape(-1, 3))
    guide = read_level(srp.level_array(bundle, coarse, 2), srp.BundleRunner(bundle, torch.device("cpu"), torch.bfloat16).level_decode_fn, F8)
    assert not all(tuple(c) in colours for c in guide.reshape(-1, 3))  # what the script gave before: not the quilt
