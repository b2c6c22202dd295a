"""A bundle's sampling tile: the latent tile side `gigagen slide` uses by default when the model samples
better with more context than its training crops had; recorded by `gigagen train --sample-tile`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from gigagen.cli import main
from gigagen.models.checkpoint import load_bundle, read_bundle_config, save_bundle
from gigagen.train import loop as L

from conftest import make_bundle, tiny_config
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name


def _slide(bundle: Path, out: Path, *extra: str) -> dict:
    assert main(["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", "--size", "256",
                 "--seed", "2", "--out", str(out), *extra]) == 0
    return json.loads((out / "run.json").read_text())


def _pixels(out: Path) -> np.ndarray:
    return zarr.open_group(str(out / "slide.ome.zarr"), mode="r")["0"][:]


def test_slide_samples_with_the_bundles_tile_and_records_it(tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors", seed=3)  # training tile 8, no sampling tile
    wide = make_bundle(tmp_path / "wide.safetensors", seed=3, sample_tile=16)  # the same weights
    r_plain, r_wide = _slide(plain, tmp_path / "p"), _slide(wide, tmp_path / "w")
    r_told = _slide(plain, tmp_path / "t", "--tile", "16")
    assert r_plain["config"]["tile"] == 8 and r_wide["config"]["tile"] == 16  # run.json names the tile used
    assert r_wide["network_evaluations"]["unet_tiles"] < r_plain["network_evaluations"]["unet_tiles"]
    assert r_wide["network_evaluations"]["unet_tiles"] == r_told["network_evaluations"]["unet_tiles"]
    np.testing.assert_array_equal(_pixels(tmp_path / "w"), _pixels(tmp_path / "t"))  # as if told --tile 16
    assert not np.array_equal(_pixels(tmp_path / "w"), _pixels(tmp_path / "p"))
    assert _slide(wide, tmp_path / "o", "--tile", "8")["config"]["tile"] == 8  # --tile still decides
    np.testing.assert_array_equal(_pixels(tmp_path / "o"), _pixels(tmp_path / "p"))


def test_bundle_refuses_a_sampling_tile_the_unet_cannot_take(tmp_path: Path) -> None:
    assert read_bundle_config(make_bundle(tmp_path / "a.safetensors", sample_tile=24)).sampling_tile == 24
    assert tiny_config().sampling_tile == 8  # none given: the training tile
    b = load_bundle(make_bundle(tmp_path / "b.safetensors"))
    assert b.config.unet.divisor == 2
    for bad in (7, 0, -4):
        with pytest.raises(ValueError, match="sample_tile"):
            save_bundle(tmp_path / "c.safetensors", dataclasses.replace(b.config, sample_tile=bad), b.ae, b.unet)
    assert not (tmp_path / "c.safetensors").exists()


def test_train_records_carries_and_checks_the_sampling_tile(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a", sample_tile=16), log=lambda s: None, progress=False)
    assert read_bundle_config(first).sample_tile == 16 and read_bundle_config(first).tile == 8
    # --init-from carries it (the same network trains on); --sample-tile replaces it
    args = ["train", str(png), "--mpp", "0.5", "--init-from", str(first), "--unet-max-steps", "4", "--decoder-every", "0",
            "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert read_bundle_config(tmp_path / "b" / "bundle.safetensors").sample_tile == 16
    assert main([*args, "--out", str(tmp_path / "c"), "--sample-tile", "32"]) == 0
    assert read_bundle_config(tmp_path / "c" / "bundle.safetensors").sample_tile == 32
    # a guide run keeps the bundle's, or records a new one
    guide = ["train", str(png), "--mpp", "0.5", "--guide-of", str(first), "--unet-base", "4", "--unet-mult", "1,2",
             "--unet-max-steps", "2", "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main([*guide, "--out", str(tmp_path / "g")]) == 0
    assert read_bundle_config(tmp_path / "g" / "bundle.safetensors").sample_tile == 16
    assert main([*guide, "--out", str(tmp_path / "h"), "--sample-tile", "24"]) == 0
    assert read_bundle_config(tmp_path / "h" / "bundle.safetensors").sample_tile == 24
    capsys.readouterr()
    for flags in (["--sample-tile", "7"], ["--sample-tile", "0"], ["--decoder-of", str(first), "--sample-tile", "16"]):
        assert main(["train", str(png), "--mpp", "0.5", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "--sample-tile" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_the_decoder_bank_samples_with_the_bundles_tile(tmp_path: Path) -> None:
    """gigagen train --decoder-of teaches the decoder on latents sampled as gigagen slide samples them."""
    import torch

    from gigagen.models.denoiser import BundleRunner
    from gigagen.train.gan_decoder import sample_finest

    def finest(path: Path, tile: int | None) -> np.ndarray:
        runner = BundleRunner(load_bundle(path), torch.device("cpu"), torch.float32)
        parent = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
        return sample_finest(runner, parent, (32, 32), seed=1, steps=3, tile=tile)
    plain = make_bundle(tmp_path / "plain.safetensors", seed=3)
    wide = make_bundle(tmp_path / "wide.safetensors", seed=3, sample_tile=16)
    np.testing.assert_array_equal(finest(wide, None), finest(plain, 16))
    assert not np.array_equal(finest(wide, None), finest(plain, None))


def test_sample_finest_from_a_noised_latent_starts_at_that_timestep(tmp_path: Path) -> None:
    """SDEdit (scripts/sample_real_parent.py --from-real T0): the latent is noised to the first sampling
    timestep <= T0 with the level's own initial noise, and only the steps from there run. An oracle network
    whose data is one constant latent z makes DDIM return z exactly, so every stage is checked by value."""
    import torch

    from gigagen.engine.noise import INITIAL, gaussian_region
    from gigagen.models.denoiser import BundleRunner
    from gigagen.train.gan_decoder import sample_finest

    calls: list[tuple[int, np.ndarray]] = []
    levels: list[int] = []

    class Oracle(BundleRunner):
        def model_fn(self, x: np.ndarray, t: int, level: int, cond: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            calls.append((t, x.copy()))
            levels.append(level)
            a = float(self.alphas_cumprod[t])
            x0 = np.broadcast_to(z[:, :1, :1], x.shape[1:])[None].repeat(len(x), 0)
            return x0, (x - np.sqrt(a) * x0) / np.sqrt(1 - a)

    runner = Oracle(load_bundle(make_bundle(tmp_path / "b.safetensors", seed=3)), torch.device("cpu"), torch.float32)
    c = runner.bundle.config
    z = np.broadcast_to(np.linspace(-1, 1, c.ae.latent_ch, dtype=np.float32)[:, None, None], (c.ae.latent_ch, 16, 16)).copy()
    parent = np.zeros((c.ae.latent_ch, 4, 4), np.float32)
    out = sample_finest(runner, parent, (16, 16), seed=1, steps=20, tile=16, start=(z, 500))
    np.testing.assert_allclose(out, z, atol=1e-5)
    assert sorted({t for t, _ in calls}, reverse=True) == list(range(499, 0, -50))  # 499, 449, ..., 49: ten steps
    first_t, first_x = calls[0]
    a = float(runner.alphas_cumprod[499])
    noise = gaussian_region(1, 0, INITIAL, 0, 16, 0, 16, c.ae.latent_ch)  # the level's initial noise
    np.testing.assert_allclose(first_x[0], np.sqrt(a) * z + np.sqrt(1 - a) * noise, atol=1e-5)
    assert set(levels) == {0}
    # another refinement level (scripts/sample_level.py): the network is told that level, with its own noise
    calls.clear()
    levels.clear()
    np.testing.assert_allclose(sample_finest(runner, parent, (16, 16), seed=1, steps=20, tile=16, start=(z, 500), level=1), z, atol=1e-5)
    noise1 = gaussian_region(1, 1, INITIAL, 0, 16, 0, 16, c.ae.latent_ch)
    assert set(levels) == {1} and not np.allclose(noise1, noise)
    np.testing.assert_allclose(calls[0][1][0], np.sqrt(a) * z + np.sqrt(1 - a) * noise1, atol=1e-5)
    with pytest.raises(ValueError, match="below the last"):
        sample_finest(runner, parent, (16, 16), seed=1, steps=20, tile=16, start=(z, 10))
    with pytest.raises(ValueError, match="shape"):
        sample_finest(runner, parent, (16, 16), seed=1, steps=20, tile=16, start=(z[:, :8], 500))
