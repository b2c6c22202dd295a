"""The finest level in a latent of its own under another bundle's coarser levels (`gigagen train --coarse-from B`,
BundleConfig.coarse_ae): the run trains the 20x denoiser in its own autoencoder's latent on parents in B's latent, and
its bundle samples every coarser level with B's autoencoder and denoiser, exactly as B does."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gigagen.cli import main
from gigagen.engine.cascade import plan_cascade, sample_cascade, local_denoiser
from gigagen.engine.grid import Tiling
from gigagen.models.checkpoint import load_bundle, save_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.models.unet import UNet
from gigagen.models.vae import AutoencoderConfig
from gigagen.pipeline import run_schedules
from gigagen.config import RunConfig
from gigagen.plan import latent_memory_bytes

from conftest import tiny_config, tiny_slide
from test_train import fake_he

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--mpp", "0.5", "--ae-crop", "32", "--ae-batch", "2", "--unet-batch", "2", "--unet-max-steps", "3", "--threads", "1",
        "--quiet", "--checkpoint-minutes", "10", "--ae-minutes", "0.02", "--max-minutes", "5", "--unet-base", "8",
        "--unet-mult", "1,2", "--tile", "8", "--ae-base", "4"]


def _train(image: Path, out: Path, *extra: str) -> Path:
    assert main(["train", str(image), "--out", str(out), *TINY, *extra]) == 0
    return out / "bundle.safetensors"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(B, H): a tiny f4 cascade B, and H, a --coarse-from B run whose finest level is an f2 latent of 3 channels."""
    d = tmp_path_factory.mktemp("coarse_ae")
    image = d / "he.png"
    Image.fromarray(fake_he()).save(image)
    b = _train(image, d / "b", "--ae-mult", "1,2,2", "--latent-ch", "4", "--layout-tile", "4")
    h = _train(image, d / "h", "--coarse-from", str(b), "--ae-mult", "1,2", "--latent-ch", "3")
    return b, h


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_run_learns_the_finest_level_in_its_own_latent_beside_b(pair: tuple[Path, Path]) -> None:
    b, h = (load_bundle(p) for p in pair)
    c = h.config
    assert c.ae.factor == 2 and c.coarse_ae == b.config.ae and c.coarse_latent_scale == b.config.latent_scale
    assert c.level_cells == (2, 4, 4) and c.level_channels == (3, 4, 4) and c.parent_factors == (8, 4, 0)
    assert c.unet.cond_channels == 4 and h.unet.stem.in_channels == 3 + 4
    # B's autoencoder and denoiser, bit for bit, hold and sample every coarser level
    assert _same_weights(h.coarse_ae, b.ae) and _same_weights(h.coarse, b.unet) and c.coarse_levels == (1, 2)
    assert c.training["coarse_from"]["from"] == b.identity and c.training["level_probs"] == [1.0, 0.0, 0.0]
    assert c.guidance == (1.0,) + b.config.guidance_per_level[1:] and c.steps == b.config.steps
    with open(pair[1].parent / "loss.csv", newline="") as f:
        assert {json.loads(r["extra"])["level"] for r in csv.DictReader(f) if r["phase"] == "unet"} == {0}


def _levels(path: Path, seed: int = 4) -> dict[int, np.ndarray]:
    """Every level's final array of a 128^2 slide sampled by the engine with the bundle's runner, in 3 steps."""
    bundle = load_bundle(path)
    c = bundle.config
    runner = BundleRunner(bundle, torch.device("cpu"), torch.bfloat16, c.guidance_per_level)
    cfg = RunConfig(width=128, height=128, out="", seed=seed, steps=(3, 3, 3))
    plans = plan_cascade(128, 128, c.level_cells, c.magnifications, c.unet.divisor)
    out: dict[int, np.ndarray] = {}
    sample_cascade(plans, channels=c.level_channels, n_steps=(3, 3, 3), seed=seed, tiling=Tiling(tile=8, divisor=c.unet.divisor),
                   denoise=local_denoiser(runner.model_fn, run_schedules(cfg, runner), 0.0),
                   on_level_done=lambda plan, store: out.__setitem__(plan.level, np.array(store.view(3)[:, :, :])))
    return out


def test_the_coarser_levels_are_sampled_exactly_as_b_samples_them(pair: tuple[Path, Path]) -> None:
    b, h = _levels(pair[0]), _levels(pair[1])
    assert np.array_equal(h[2], b[2]) and np.array_equal(h[1], b[1])  # layout and 5x: B's, bit for bit
    assert h[0].shape[0] == 3 and b[0].shape[0] == 4  # the finest level: H's own latent
    assert h[0].shape[1:] == (2 * b[0].shape[1], 2 * b[0].shape[2])  # f2 against f4: twice the cells per side


def test_a_slide_of_h_has_b_s_layout(pair: tuple[Path, Path], tmp_path: Path) -> None:
    for name, bundle in (("b", pair[0]), ("h", pair[1])):
        tiny_slide(bundle, tmp_path / name)
    run = json.loads((tmp_path / "h" / "run.json").read_text())
    assert [(lv["channels"], lv["cell_px"], lv["made_by"]) for lv in run["levels"]] == [
        (3, 2, "denoiser"), (4, 4, "coarse denoiser"), (4, 4, "coarse denoiser")]
    layouts = [np.array(Image.open(tmp_path / name / "layout.png")) for name in ("b", "h")]
    assert np.array_equal(*layouts)  # decoded by B's autoencoder from B's layout level


def test_the_plan_counts_each_level_s_channels(pair: tuple[Path, Path]) -> None:
    c = load_bundle(pair[1]).config
    plans = plan_cascade(256, 256, c.level_cells, c.magnifications, c.unet.divisor)
    a = [p.shape[0] * p.shape[1] for p in plans]
    cfg = RunConfig(width=256, height=256, out="", seed=0)
    assert latent_memory_bytes(cfg, plans, c.level_channels) == (2 * a[0] * 3 + a[1] * 4) * 4


def test_scripts_that_rewrite_a_bundle_keep_its_coarse_autoencoder(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "set_sampling_defaults.py"), str(pair[1]), "--out", str(out),
                           "--steps", "5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    h, s = load_bundle(pair[1]), load_bundle(out)
    assert s.config.steps == (5, 5, 5) and s.config.coarse_ae == h.config.coarse_ae
    assert _same_weights(s.coarse_ae, h.coarse_ae) and _same_weights(s.coarse, h.coarse)


@pytest.mark.parametrize("extra, said", [
    (["--init-from", "B"], "--init-from"),
    (["--level-probs", "0.5,0.5,0"], "finest level only"),
    (["--magnifications", "20,10,5"], "--magnifications"),
    (["--coarse-warps", "2"], "--coarse-warps"),
    # a UNet whose tiles B's denoiser cannot run (divisor 1 under B's 2): refused before training, not at export
    (["--unet-mult", "1", "--ae-mult", "1,2", "--latent-ch", "3", "--mpp", "0.5"], "divisor"),
])
def test_refusals_are_one_line(pair: tuple[Path, Path], extra: list[str], said: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = [str(pair[0]) if a == "B" else a for a in extra]
    image = pair[0].parent.parent / "he.png"
    assert main(["train", str(image), "--out", str(tmp_path / "r"), "--coarse-from", str(pair[0]), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and not (tmp_path / "r").exists()


def test_a_bundle_with_its_own_coarse_network_is_refused_as_b(pair: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    image = pair[0].parent.parent / "he.png"
    assert main(["train", str(image), "--out", str(tmp_path / "r"), "--coarse-from", str(pair[1])]) == 2
    assert "coarse network" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--init-from", "--guide-of", "--decoder-of"])
def test_runs_that_would_read_its_coarser_levels_in_the_wrong_latent_are_refused(
        pair: tuple[Path, Path], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = pair[0].parent.parent / "he.png"
    assert main(["train", str(image), "--out", str(tmp_path / "r"), "--mpp", "0.5", flag, str(pair[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "second autoencoder" in err and not (tmp_path / "r").exists()


def test_resume_needs_the_same_coarse_bundle(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = pair[1].parent
    image = pair[0].parent.parent / "he.png"
    args = ["train", str(image), "--out", str(run), "--resume", *TINY, "--ae-mult", "1,2", "--latent-ch", "3"]
    assert main(args) == 2  # without --coarse-from: another run's configuration
    assert "--coarse-from" in capsys.readouterr().err


def test_a_bundle_the_engine_cannot_sample_is_refused(tmp_path: Path) -> None:
    fine = AutoencoderConfig(base_ch=8, ch_mult=(1, 2), latent_ch=3)
    base = tiny_config()
    coarse_net = base.unet
    good = dict(ae=fine, unet=dataclasses.replace(base.unet, latent_ch=3, cond_ch=4), coarse_ae=base.ae, coarse=coarse_net,
                coarse_levels=(1, 2))
    bad = [
        dict(coarse=None, coarse_levels=()),  # nothing samples the coarser levels
        dict(coarse_levels=(1,)),  # the layout level would be sampled by the main network, in the wrong latent
        dict(unet=dataclasses.replace(base.unet, latent_ch=3, cond_ch=3)),  # the main network reads a 3-channel parent
        dict(coarse=dataclasses.replace(coarse_net, latent_ch=3)),  # the coarse network in the wrong latent
        dict(pixel_levels=(1,)),
        # a guide or an expert of the finest level that would read a parent of the finest latent's channels
        dict(guide=dataclasses.replace(base.unet, latent_ch=3), guide_levels=(0,), autoguidance=1.5),
        dict(expert=dataclasses.replace(base.unet, latent_ch=3), expert_levels=(0,), expert_from=500),
    ]
    cfg = tiny_config(**good)
    from gigagen.models.checkpoint import validate_config

    validate_config(cfg)
    fitting = dict(guide=dataclasses.replace(base.unet, latent_ch=3, cond_ch=4), guide_levels=(0,), autoguidance=1.5,
                   expert=dataclasses.replace(base.unet, latent_ch=3, cond_ch=4), expert_levels=(0,), expert_from=500)
    validate_config(dataclasses.replace(cfg, **fitting))  # the same, reading the coarse latent: accepted
    for fields in bad:
        with pytest.raises(ValueError):
            validate_config(dataclasses.replace(cfg, **fields))
    with pytest.raises(ValueError, match="coarse autoencoder"):  # a parent of other channels needs a coarse autoencoder
        validate_config(tiny_config(unet=dataclasses.replace(base.unet, cond_ch=5)))
    with pytest.raises(ValueError, match="coarse autoencoder is saved"):
        save_bundle(tmp_path / "x.safetensors", cfg, None, UNet(cfg.unet), coarse=UNet(coarse_net))  # type: ignore[arg-type]
