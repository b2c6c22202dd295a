"""The decoder's full-resolution refiner (gigagen train --decoder-of B --decoder-refine W): function-preserving
growth, exact tiled decode with its wider receptive field, bundles that carry it, and the CLI's checks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from gigagen.cli import main
from gigagen.engine.decode import stream_decode, to_uint8
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle, save_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.models.unet import UNet
from gigagen.models.vae import Autoencoder
from test_train import small_bundle, tiny_cfg  # noqa: F401 (small_bundle: the fixture, shared, not copied)


def _refined_bundle(path: Path, refine_ch: int = 6) -> Path:
    """A tiny bundle whose decoder has a refiner with a non-zero output (so it changes every pixel)."""
    torch.manual_seed(1)
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, ae=dataclasses.replace(cfg.ae, refine_ch=refine_ch))
    ae = Autoencoder(cfg.ae)
    torch.nn.init.normal_(ae.decoder.refine.out.weight, std=0.2)
    save_bundle(path, cfg, ae, UNet(cfg.unet))
    return path


def test_refiner_widens_the_decode_halo_and_tiled_decode_stays_exact(tmp_path: Path) -> None:
    b = load_bundle(_refined_bundle(tmp_path / "r.safetensors"))
    ae = b.config.ae
    assert ae.decode_halo == 6 + 2 and dataclasses.replace(ae, refine_ch=0).decode_halo == 6  # 5 more px at f4
    runner = BundleRunner(b, torch.device("cpu"), torch.float32)
    latent = np.random.default_rng(0).standard_normal((4, 40, 52)).astype(np.float32)
    whole = to_uint8(runner.decode_fn(latent[None])[0])
    out = np.zeros((3, 150, 201), dtype=np.uint8)
    for tile, rgb in stream_decode(latent, runner.decode_fn, 4, 150, 201, chunk=64, halo=ae.decode_halo):
        out[:, tile.y0 : tile.y1, tile.x0 : tile.x1] = rgb
    diff = np.abs(out.astype(int) - whole[:, :150, :201].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # the refiner draws: without it the same latent decodes to other pixels
    base = Autoencoder(dataclasses.replace(ae, refine_ch=0))
    base.load_state_dict({k: v for k, v in b.ae.state_dict().items() if ".refine." not in k})
    with torch.no_grad():
        plain = to_uint8(base.decode(torch.from_numpy(latent[None])).numpy()[0])
    assert np.abs(plain.astype(int) - whole.astype(int)).mean() > 1


def test_a_slide_decodes_with_a_refined_bundle(tmp_path: Path) -> None:
    path = _refined_bundle(tmp_path / "r.safetensors")
    out = tmp_path / "s"
    assert main(["slide", "--checkpoint", str(path), "--size", "200", "--out", str(out), "--seed", "3", "--quiet",
                 "--formats", "none"]) == 0
    assert (out / "slide.ome.zarr").is_dir()


def test_decoder_refine_grows_a_decoder_that_starts_as_the_old_one(small_bundle: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gigagen.train import gan_decoder as G

    png, first = small_bundle
    first = Path(shutil.copy(first, tmp_path / "a.safetensors"))
    a = load_bundle(first)
    grown = G.start_decoder(a, 8)
    z = torch.randn(2, 2, 6, 7)
    with torch.no_grad():
        assert torch.equal(grown(z), a.ae.decoder(z))  # zero-initialised output: function-preserving
    cfg = tiny_cfg(png, tmp_path / "d", decoder_of=str(first), gan_max_steps=3, gan_bank_seeds=1, gan_refine=8, gan_mix=1.0)
    out = G.train_decoder(cfg, log=lambda s: None, progress=False)
    d = load_bundle(out)
    assert d.config.ae.refine_ch == 8 and d.config.training["decoder_gan"]["refine_ch"] == 8
    assert d.ae.decoder.refine.out.weight.abs().sum() > 0  # the refiner learned
    for (name, pa), pb in zip(a.ae.encoder.state_dict().items(), d.ae.encoder.state_dict().values()):
        assert torch.equal(pa, pb), name  # latents stay valid
    # mix 0 re-exports the decoder the run started from: the old decoder's pixels exactly
    G.train_decoder(dataclasses.replace(cfg, gan_mix=0.0, max_minutes=0.0), resume=True, log=lambda s: None, progress=False)
    zero = load_bundle(out)
    with torch.no_grad():
        assert torch.equal(zero.ae.decoder(z), a.ae.decoder(z))
    # resuming with another refiner width is refused in one line, not a state-dict traceback
    with pytest.raises(UserError, match="--decoder-refine 8"):
        G.train_decoder(dataclasses.replace(cfg, gan_refine=0), resume=True, log=lambda s: None, progress=False)
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--threads", "1", "--out", str(tmp_path / "e")]
    assert main(base + ["--decoder-refine", "8"]) == 2
    assert "--decoder-of" in capsys.readouterr().err
    assert main(base + ["--decoder-of", str(first), "--decoder-refine", "-1"]) == 2
    assert "--decoder-refine" in capsys.readouterr().err
    assert main(base + ["--decoder-of", str(out), "--decoder-refine", "8"]) == 2  # has a refiner already
    assert "refiner already" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
