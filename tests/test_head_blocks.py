"""The denoiser's full-resolution head (UNetConfig.head_blocks; gigagen train --init-from B --unet-head-blocks N):
growth that starts as the identity, training that moves it, bundles that carry it, and the CLI's checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gigagen.cli import main
from gigagen.models.checkpoint import load_bundle, read_bundle_config
from gigagen.models.unet import UNet, UNetConfig
from gigagen.train import loop as L
from test_train import small_bundle, tiny_cfg  # noqa: F401 (small_bundle: the fixture, shared, not copied)


def _inputs(cfg: UNetConfig, side: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, cfg.latent_ch, side, side, generator=g)
    cond = torch.randn(3, cfg.latent_ch, side, side, generator=g)
    return x, torch.tensor([10.0, 500.0, 990.0]), torch.tensor([0, 1, 2]), cond, torch.tensor([1.0, 1.0, 0.0])


def test_head_blocks_start_as_the_identity_and_then_compute() -> None:
    torch.manual_seed(0)
    base_cfg = UNetConfig(latent_ch=3, base_ch=8, ch_mult=(1, 2), attn_lowest=False)
    base = UNet(base_cfg).eval()
    torch.nn.init.normal_(base.out.weight, std=0.1)  # a "trained" output layer, so the output is not all zero
    grown = UNet(dataclasses.replace(base_cfg, head_blocks=2)).eval()
    missing, unexpected = grown.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("head.0.", "head.1.")) for k in missing)
    args = _inputs(base_cfg)
    with torch.no_grad():
        y = base(*args)
        assert y.abs().mean() > 0.01 and torch.equal(grown(*args), y)
        torch.nn.init.normal_(grown.head[1].conv2.weight, std=0.1)  # once trained, the head changes the output
        assert (grown(*args) - y).abs().mean() > 1e-3


def test_init_from_grows_the_denoiser_and_the_bundle_carries_its_head(small_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    png, first = small_bundle
    a = load_bundle(first)
    unet = dataclasses.replace(a.config.unet, head_blocks=1)
    cfg = tiny_cfg(png, tmp_path / "g", init_from=str(first), unet=unet, unet_max_steps=a.config.training["unet_step"] + 4,
                   decoder_every=0, warmup_steps=1)
    b = load_bundle(L.train(cfg, log=lambda s: None, progress=False))
    assert b.config.unet.head_blocks == 1 and len(b.unet.head) == 1
    old = a.unet.state_dict()
    new = b.unet.state_dict()
    assert set(new) - set(old) == {k for k in new if k.startswith("head.0.")}
    assert new["head.0.conv2.weight"].abs().max() > 0  # the zero-initialised conv trained
    # a bundle with a head continues with it (the default keeps the bundle's head, it never drops it)
    with pytest.raises(L.UserError, match="--init-from"):
        L.train(tiny_cfg(png, tmp_path / "h", init_from=str(tmp_path / "g" / "bundle.safetensors"), unet=a.config.unet,
                         decoder_every=0), log=lambda s: None, progress=False)


def test_cli_head_blocks(small_bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, first = small_bundle
    common = ["--mpp", "0.5", "--decoder-every", "0", "--unet-batch", "2", "--threads", "1", "--quiet"]
    rc = main(["train", str(png), "--out", str(tmp_path / "g"), "--init-from", str(first), "--unet-head-blocks", "2",
               "--unet-max-steps", str(read_bundle_config(first).training["unet_step"] + 2), *common])
    assert rc == 0
    grown = tmp_path / "g" / "bundle.safetensors"
    assert read_bundle_config(grown).unet.head_blocks == 2
    rc = main(["train", str(png), "--out", str(tmp_path / "k"), "--init-from", str(grown), "--max-minutes", "0.02", *common])
    assert rc == 0 and read_bundle_config(tmp_path / "k" / "bundle.safetensors").unet.head_blocks == 2  # kept by default
    for bad, what in ((["--init-from", str(grown), "--unet-head-blocks", "1"], "cut it"), (["--unet-head-blocks", "9"], "between 0 and 8")):
        assert main(["train", str(png), "--out", str(tmp_path / "bad"), *bad, *common]) == 2
        err = capsys.readouterr().err
        assert what in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
