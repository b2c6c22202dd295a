"""A bundle's coarse network: a second denoiser that samples the coarser levels in place of the main one
(BundleConfig.coarse), its bundle format, its routing in the runner and scripts/set_coarse_network.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.models.checkpoint import load_bundle, save_bundle
from gigagen.models.unet import UNet, UNetConfig
from gigagen.train.loop import TrainConfig, carried_coarse, carry_over

from conftest import make_guided_bundle, one_step_x0, tiny_config, tiny_slide
from test_train import png  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "set_coarse_network.py"


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def coarse_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bundle with a coarse network for levels 1 and 2, taken from a guide trained (here: drawn at random) on
    those levels of the same latents (make_guided_bundle with tiny_bundle's seed has its autoencoder)."""
    d = tmp_path_factory.mktemp("coarse")
    run = make_guided_bundle(d / "run.safetensors", seed=0, guide_levels=(1, 2))
    done = _script(tiny_bundle, "--from", run, "--out", d / "coarse.safetensors")
    assert done.returncode == 0, done.stderr
    return d / "coarse.safetensors"


def test_the_coarse_network_samples_its_levels_and_only_those(coarse_bundle: Path, tiny_bundle: Path) -> None:
    b, plain = load_bundle(coarse_bundle), load_bundle(tiny_bundle)
    assert b.coarse is not None and b.config.coarse_levels == (1, 2) and b.config.coarse.base_ch == 8
    assert b.denoiser(0) is b.unet and b.denoiser(1) is b.coarse and b.denoiser(2) is b.coarse
    assert plain.denoiser(1) is plain.unet
    # the finest level is the main network's, bit for bit; the coarser ones are the coarse network's
    assert np.array_equal(one_step_x0(coarse_bundle, 600, 0), one_step_x0(tiny_bundle, 600, 0))
    for level in (1, 2):
        assert np.abs(one_step_x0(coarse_bundle, 600, level) - one_step_x0(tiny_bundle, 600, level)).max() > 1e-3


def test_the_script_keeps_everything_else_and_records_the_source(coarse_bundle: Path, tiny_bundle: Path) -> None:
    b, plain = load_bundle(coarse_bundle), load_bundle(tiny_bundle)
    for mine, theirs in ((b.unet, plain.unet), (b.ae, plain.ae)):
        assert all(torch.equal(p, q) for p, q in zip(mine.state_dict().values(), theirs.state_dict().values()))
    assert b.guide is None and b.config.autoguidance == plain.config.autoguidance
    assert b.config.training["coarse"]["levels"] == [1, 2] and b.config.training["coarse"]["from"].startswith("tiny-test@")


def test_the_script_refuses_what_it_cannot_install(tiny_bundle: Path, guided_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "new.safetensors"
    finest = _script(tiny_bundle, "--from", guided_bundle, "--out", out)  # that guide learned level 0 too
    assert finest.returncode == 2 and "coarser levels only" in finest.stderr and "Traceback" not in finest.stderr
    other = make_guided_bundle(tmp_path / "other.safetensors", seed=5, guide_levels=(1, 2))  # another autoencoder
    wrong = _script(tiny_bundle, "--from", other, "--out", out)
    assert wrong.returncode == 2 and "latents" in wrong.stderr
    assert not out.exists()
    out.write_bytes(b"mine")
    exists = _script(tiny_bundle, "--from", other, "--out", out)
    assert exists.returncode == 2 and out.read_bytes() == b"mine"


def test_inconsistent_coarse_configurations_are_refused() -> None:
    coarse = UNetConfig(latent_ch=4, base_ch=8, ch_mult=(1, 2), n_levels=3)
    bad = [
        dict(coarse_levels=(1,)),  # levels without a network
        dict(coarse=coarse),  # a network for no level
        dict(coarse=coarse, coarse_levels=(3,)),  # not a level of the cascade
        dict(coarse=dataclasses.replace(coarse, ch_mult=(1, 2, 2)), coarse_levels=(1,)),  # divisor 4 does not divide 2
        dict(coarse=dataclasses.replace(coarse, latent_ch=8), coarse_levels=(1,)),
    ]
    for fields in bad:
        with pytest.raises(ValueError, match="coarse"):
            save_bundle(Path("unused.safetensors"), tiny_config(**fields), None, None, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coarse network is saved"):
        cfg = tiny_config(coarse=coarse, coarse_levels=(1,))
        save_bundle(Path("unused.safetensors"), cfg, None, UNet(cfg.unet), None)  # type: ignore[arg-type]


def test_an_init_from_run_carries_the_coarse_network(coarse_bundle: Path) -> None:
    b = load_bundle(coarse_bundle)
    cfg = TrainConfig(inputs=[], out=Path("unused"), magnifications=b.config.magnifications)
    net, fields = carried_coarse(dataclasses.replace(_State(), carried=carry_over(b, "coarse", cfg)))
    assert fields == {"coarse": b.config.coarse, "coarse_levels": (1, 2)}
    assert net is not None and all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), b.coarse.state_dict().values()))


@dataclasses.dataclass
class _State:
    carried: dict = dataclasses.field(default_factory=dict)


def test_a_slide_samples_with_the_coarse_network(coarse_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    def slide(bundle: Path, out: Path) -> np.ndarray:
        made, pixels = tiny_slide(bundle, out)
        assert made == (["denoiser", "coarse denoiser", "coarse denoiser"] if bundle == coarse_bundle else ["denoiser"] * 3)
        return pixels

    with_coarse, without = slide(coarse_bundle, tmp_path / "a"), slide(tiny_bundle, tmp_path / "b")
    assert with_coarse.shape == without.shape and not np.array_equal(with_coarse, without)


def test_the_recipe_trains_a_coarse_network_without_attention_and_installs_it(png: Path, tmp_path: Path) -> None:  # noqa: F811
    """gigagen train --guide-of B --level-probs 0,P,Q --unet-no-attn --coarse-warps N, then the script: the network
    learns the coarser levels only (from coarse warps too), has no self-attention, and samples those levels of B."""
    first = tmp_path / "a"
    base = ["train", str(png), "--mpp", "0.5", "--unet-max-steps", "2", "--unet-batch", "2", "--threads", "1", "--quiet",
            "--decoder-every", "0"]
    assert main([*base, "--out", str(first), "--ae-minutes", "0.05", "--unet-base", "8", "--unet-mult", "1,2"]) == 0
    bundle = first / "bundle.safetensors"
    assert main([*base, "--out", str(tmp_path / "c"), "--guide-of", str(bundle), "--level-probs", "0,0.7,0.3",
                 "--unet-base", "4", "--unet-mult", "1,2", "--unet-no-attn", "--coarse-warps", "1"]) == 0
    run = load_bundle(tmp_path / "c" / "bundle.safetensors")
    assert run.config.guide is not None and run.config.guide.attn_lowest is False and run.config.guide_levels == (1, 2)
    assert isinstance(run.guide.mid_attn, torch.nn.Identity) and run.config.training["guide"]["coarse_warps"]["n"] == 1
    done = _script(bundle, "--from", tmp_path / "c" / "bundle.safetensors", "--out", tmp_path / "new.safetensors")
    assert done.returncode == 0, done.stderr
    new = load_bundle(tmp_path / "new.safetensors")
    assert new.config.coarse_levels == (1, 2) and new.config.coarse.attn_lowest is False and new.guide is None
