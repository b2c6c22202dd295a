"""A bundle's expert: a copy of the main denoiser trained on the high-noise timesteps alone (`gigagen train
--t-range LO,1000`), which samples those steps in its place (BundleConfig.expert, scripts/set_expert.py)."""

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
from gigagen.models.unet import UNet
from gigagen.sampling.schedules import cosine_alphas_cumprod
from gigagen.train import loop as L
from gigagen.train.distill import distill_plan
from gigagen.errors import UserError

from conftest import make_bundle, one_step_x0, tiny_config, tiny_slide
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "set_expert.py"


def _script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _with_expert(path: Path, **overrides: object) -> Path:
    """make_bundle(seed 0) plus a random expert (another draw of the same UNet) for level 0 from timestep 500."""
    make_bundle(path)
    plain = load_bundle(path)
    torch.manual_seed(1)
    expert = UNet(plain.config.unet)
    torch.nn.init.normal_(expert.out.weight, std=0.05)
    fields = dict(expert=plain.config.unet, expert_levels=(0,), expert_from=500) | overrides
    save_bundle(path, dataclasses.replace(plain.config, **fields), plain.ae, plain.unet, expert=expert)
    return path


@pytest.fixture(scope="module")
def expert_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _with_expert(tmp_path_factory.mktemp("expert") / "expert.safetensors")


def test_the_expert_samples_its_levels_from_its_timestep_on(expert_bundle: Path, tiny_bundle: Path) -> None:
    b = load_bundle(expert_bundle)
    assert b.denoiser(0, 500) is b.expert and b.denoiser(0, 999) is b.expert
    assert b.denoiser(0, 499) is b.unet and b.denoiser(1, 900) is b.unet and b.denoiser(0) is b.unet
    # below its timestep and at other levels the main network's output, bit for bit; above it, the expert's
    assert np.array_equal(one_step_x0(expert_bundle, 400, 0), one_step_x0(tiny_bundle, 400, 0))
    assert np.array_equal(one_step_x0(expert_bundle, 800, 1), one_step_x0(tiny_bundle, 800, 1))
    assert np.abs(one_step_x0(expert_bundle, 800, 0) - one_step_x0(tiny_bundle, 800, 0)).max() > 1e-3


def test_a_slide_samples_with_the_expert(expert_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    def slide(bundle: Path, out: Path) -> np.ndarray:
        made, pixels = tiny_slide(bundle, out)
        first = "denoiser, its expert from timestep 500" if bundle == expert_bundle else "denoiser"
        assert made == [first, "denoiser", "denoiser"]
        return pixels

    assert not np.array_equal(slide(expert_bundle, tmp_path / "a"), slide(tiny_bundle, tmp_path / "b"))


@pytest.mark.parametrize("fields", [
    dict(expert_levels=()),  # an expert for no level
    dict(expert_levels=(3,)),  # not a level of the cascade
    dict(expert_from=0),  # every step: that is a main network, not an expert
    dict(expert_from=1000),  # no step
])
def test_an_expert_the_engine_cannot_use_is_refused(fields: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expert"):
        _with_expert(tmp_path / "x.safetensors", **fields)


def test_an_expert_beside_a_coarse_network_stays_off_its_levels(tmp_path: Path) -> None:
    small = dataclasses.replace(tiny_config().unet, base_ch=8)
    with pytest.raises(ValueError, match="levels the main network samples"):
        _with_expert(tmp_path / "x.safetensors", expert_levels=(1,), coarse=small, coarse_levels=(1, 2))


def test_distillation_refuses_a_bundle_with_an_expert(expert_bundle: Path) -> None:
    with pytest.raises(UserError, match="expert"):
        distill_plan(dataclasses.replace(load_bundle(expert_bundle), config=dataclasses.replace(
            load_bundle(expert_bundle).config, autoguidance=1.0, guidance=(2.0, 1.0))), expert_bundle)


def test_t_range_trains_and_validates_only_its_timesteps(png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    seen: list[torch.Tensor] = []
    real = L.noised_pair

    def spy(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(a.flatten())
        return real(x0, a, s, gamma)

    monkeypatch.setattr(L, "noised_pair", spy)
    first = L.train(tiny_cfg(png, tmp_path / "a", unet_max_steps=1), progress=False, log=lambda _: None)
    seen.clear()
    L.train(tiny_cfg(png, tmp_path / "b", init_from=str(first), t_range=(600, 1000), unet_max_steps=6, holdout_frac=0.3),
            progress=False, log=lambda _: None)
    a = torch.cat(seen)
    # a = sqrt(abar[t]) falls with t: every training step (5 of batch 2: --init-from carries the first run's step) drew t >= 600
    assert len(a) == 5 * 2 and a.max().item() <= float(np.sqrt(cosine_alphas_cumprod(1000)[600])) + 1e-6
    run = load_bundle(tmp_path / "b" / "bundle.safetensors")
    assert run.config.training["t_range"] == [600, 1000] and run.config.training["validation"]["times"] == [700, 900]
    assert L.val_times((0, 1000)) == L.VAL_TIMES and L.val_times((400, 1000)) == (500, 700, 900)
    # resuming it on every timestep would quietly turn the expert back into a main network
    with pytest.raises(UserError, match="--t-range 600,1000"):
        L.train(tiny_cfg(png, tmp_path / "b", unet_max_steps=8, holdout_frac=0.3), resume=True, progress=False, log=lambda _: None)


def test_the_recipe_installs_the_run_as_the_bundles_expert(png: Path, tmp_path: Path) -> None:  # noqa: F811
    base = ["train", str(png), "--mpp", "0.5", "--unet-max-steps", "2", "--unet-batch", "2", "--threads", "1", "--quiet",
            "--decoder-every", "0", "--unet-base", "8", "--unet-mult", "1,2"]
    assert main([*base, "--out", str(tmp_path / "a"), "--ae-minutes", "0.05"]) == 0
    bundle = tmp_path / "a" / "bundle.safetensors"
    assert main([*base, "--out", str(tmp_path / "e"), "--init-from", str(bundle), "--t-range", "400,1000",
                 "--level-probs", "1,0,0", "--unet-max-steps", "4"]) == 0
    run = tmp_path / "e" / "bundle.safetensors"
    done = _script(bundle, "--from", run, "--out", tmp_path / "new.safetensors")
    assert done.returncode == 0, done.stderr
    new, old, trained = load_bundle(tmp_path / "new.safetensors"), load_bundle(bundle), load_bundle(run)
    assert new.config.expert_levels == (0,) and new.config.expert_from == 400
    assert new.config.training["expert"]["t_range"] == [400, 1000]
    for mine, theirs in ((new.unet, old.unet), (new.ae, old.ae), (new.expert, trained.unet)):
        assert all(torch.equal(p, q) for p, q in zip(mine.state_dict().values(), theirs.state_dict().values()))
    # continuing the expert bundle's denoiser drops the expert, which no longer matches it
    assert main([*base, "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "new.safetensors")]) == 0
    assert load_bundle(tmp_path / "c" / "bundle.safetensors").expert is None


def test_set_expert_refusals_are_one_line_and_keep_existing_files(expert_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    # a run trained on every timestep is not an expert
    done = _script(expert_bundle, "--from", tiny_bundle, "--out", tmp_path / "x.safetensors")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--t-range" in done.stderr
    assert not (tmp_path / "x.safetensors").exists()
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes(b"user data")
    done = _script(expert_bundle, "--from", tiny_bundle, "--out", kept)
    assert done.returncode == 2 and "exists" in done.stderr and kept.read_bytes() == b"user data"


@pytest.mark.parametrize("bad", ["400", "500,400", "0,1001", "910,1000"])
def test_a_bad_t_range_is_one_line(bad: str, png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert main(["train", str(png), "--out", str(tmp_path / "r"), "--t-range", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--t-range" in err and not (tmp_path / "r").exists()


def test_validate_bundle_measures_each_timestep_on_the_network_that_samples_it(expert_bundle: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("validate_bundle", ROOT / "scripts" / "validate_bundle.py")
    vb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vb)
    b = load_bundle(expert_bundle)
    gen = torch.Generator().manual_seed(0)
    xt, cond, target = (torch.randn(4, 4, 8, 8, generator=gen) for _ in range(3))
    t = torch.tensor([300, 300, 700, 700])
    vs = L.ValSet({0: 8}, {("held", 0): (xt, cond, torch.ones(4), t, target)})
    got = vb.by_time_losses(b, vs)
    for time, net in ((300, b.unet), (700, b.expert)):
        rows = t == time
        one = dataclasses.replace(vs, batches={("held", 0): (xt[rows], cond[rows], torch.ones(2), t[rows], target[rows])})
        assert got[("held", 0, time)] == L.val_losses(net, one, torch.bfloat16)[("held", 0)]
    assert got[("held", 0, 700)] != L.val_losses(b.unet, dataclasses.replace(vs, batches={("held", 0): tuple(
        x[t == 700] for x in vs.batches[("held", 0)])}), torch.bfloat16)[("held", 0)]
    assert vb.level_means(got)[("held", 0)] == pytest.approx((got[("held", 0, 300)] + got[("held", 0, 700)]) / 2)
