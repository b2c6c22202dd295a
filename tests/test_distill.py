"""Guidance distillation (gigagen train --init-from B --distill): the student learns B's guided output and its
bundle samples in one pass per tile, without a guide."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle, save_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.models.unet import UNetConfig
from gigagen.train import loop as L
from gigagen.train.distill import teacher_target

from conftest import make_guided_bundle
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name

CPU = torch.device("cpu")


def quiet(_: str) -> None:
    pass


@pytest.fixture()
def teacher(png: Path, tmp_path: Path) -> Path:  # noqa: F811 - the fixture
    """A tiny trained bundle with a guide (autoguidance 2.5 at 20x) and guidance 3 at 5x, its main and guide
    networks' output layers drawn at random so the guided output differs from the plain one."""
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=quiet, progress=False)
    small = UNetConfig(latent_ch=2, base_ch=4, ch_mult=(1, 2), attn_lowest=False)
    guided = L.train(tiny_cfg(png, tmp_path / "g", unet=small, guide_of=str(first), autoguidance=2.5, guidance=(1.0, 3.0),
                              level_probs=(1.0, 0.0, 0.0), unet_max_steps=2), log=quiet, progress=False)
    b = load_bundle(guided)
    torch.manual_seed(0)
    for net in (b.unet, b.guide):
        torch.nn.init.normal_(net.out.weight, std=0.05)
    path = tmp_path / "teacher.safetensors"
    save_bundle(path, b.config, b.ae, b.unet, b.guide)
    return path


def val_rows(run: Path) -> dict[tuple[str, int, int], float]:
    """(phase, step, level) -> validation loss, from the run's loss.csv."""
    rows = (r for r in csv.DictReader(open(run / "loss.csv")) if r["phase"].startswith("val"))
    return {(r["phase"], int(r["step"]), json.loads(r["extra"])["level"]): float(r["loss"]) for r in rows}


def test_teacher_target_is_the_guided_output_crop_by_crop(tmp_path: Path) -> None:
    b = load_bundle(make_guided_bundle(tmp_path / "g.safetensors", autoguidance=2.0, guide_levels=(0, 1)))
    runner = BundleRunner(b, CPU, torch.bfloat16, guidance=(1.0, 3.0), autoguidance=2.0)
    gen = torch.Generator().manual_seed(3)
    xt, cond = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 400, 700, 900])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])  # crops 1 and 3 had their parent dropped
    out = teacher_target(runner, xt, t, 1, cond, mask)
    for i in range(4):
        one = runner.guided(xt[i : i + 1], int(t[i]), 1, cond[i : i + 1] if mask[i] else None)
        torch.testing.assert_close(out[i : i + 1], one, rtol=0, atol=1e-5)
    # guidance changes the output: kept and dropped parents differ, and both differ from the plain network
    plain = BundleRunner(b, CPU, torch.bfloat16)
    assert (runner.guided(xt[:1], 100, 1, cond[:1]) - runner.guided(xt[:1], 100, 1, None)).abs().max() > 1e-3
    assert (runner.guided(xt[:1], 100, 1, cond[:1]) - plain.guided(xt[:1], 100, 1, cond[:1])).abs().max() > 1e-3


def test_a_distill_run_learns_the_guided_output_and_exports_a_one_pass_bundle(png: Path, teacher: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_cfg(png, tmp_path / "s", init_from=str(teacher), distill=True, unet_max_steps=40, ema=0.5, unet_lr=1e-3,
                   warmup_steps=1, decoder_every=0)
    out = L.train(cfg, log=quiet, progress=False)
    s, t = load_bundle(out), load_bundle(teacher)
    # validation measures the match to the teacher's guided output; it starts at the teacher's own weights
    val = val_rows(tmp_path / "s")
    for level in (0, 1):
        first, last = val[("val_held", 3, level)], val[("val_held", 40, level)]
        assert last < 0.7 * first, (level, first, last)
    # one pass per tile: no guide, guidance 1; the record says what it learnt from
    assert s.guide is None and s.config.autoguidance == 1.0 and s.config.guidance_per_level == (1.0, 1.0)
    assert s.config.training["distilled"] == {"teacher": t.identity, "guidance": [1.0, 3.0], "autoguidance": 2.5, "guide_levels": [0]}
    assert "guide" not in s.config.training and s.config.training["denoiser_from"] == teacher.name
    assert all(torch.equal(p, q) for p, q in zip(s.ae.state_dict().values(), t.ae.state_dict().values()))


def test_resume_goes_on_distilling_and_refuses_a_changed_teacher(png: Path, teacher: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_cfg(png, tmp_path / "s", init_from=str(teacher), distill=True, unet_max_steps=6, decoder_every=0)
    L.train(cfg, log=quiet, progress=False)
    more = dataclasses.replace(cfg, init_from=None, distill=False, unet_max_steps=9)  # as `--resume` builds it
    s = load_bundle(L.train(more, resume=True, log=quiet, progress=False))
    assert s.config.training["unet_step"] == 9 and s.guide is None and "distilled" in s.config.training
    with pytest.raises(UserError, match="--guidance"):  # guidance on top of the learnt guidance: refused on resume too
        L.train(dataclasses.replace(more, guidance=(1.0, 2.0), unet_max_steps=10), resume=True, log=quiet, progress=False)
    b = load_bundle(teacher)
    torch.nn.init.normal_(b.unet.out.weight, std=0.05)
    save_bundle(teacher, b.config, b.ae, b.unet, b.guide)
    with pytest.raises(UserError, match="changed since the run started"):
        L.train(dataclasses.replace(more, unet_max_steps=12), resume=True, log=quiet, progress=False)


def test_cli_distill_refusals_are_one_line(png: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--threads", "1", "--unet-max-steps", "1"]
    assert main([*base, "--out", str(tmp_path / "r"), "--distill"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "r"), "--distill", "--init-from", str(teacher), "--guidance", "2"]) == 2
    assert "--guidance" in capsys.readouterr().err
    plain = L.train(tiny_cfg(png, tmp_path / "plain"), log=quiet, progress=False)  # guidance 1, no guide
    assert main([*base, "--out", str(tmp_path / "r"), "--distill", "--init-from", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "nothing to distil" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "state.pt").exists()
    rc = main([*base, "--out", str(tmp_path / "ok"), "--distill", "--init-from", str(teacher), "--decoder-every", "0"])
    assert rc == 0 and "distilled" in load_bundle(tmp_path / "ok" / "bundle.safetensors").config.training
    capsys.readouterr()
    np.testing.assert_equal(load_bundle(tmp_path / "ok" / "bundle.safetensors").config.guidance_per_level, (1.0, 1.0))
