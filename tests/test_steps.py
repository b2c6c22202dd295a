"""DDIM steps per level: `gigagen slide --steps N[,N...]` and a bundle's default (BundleConfig.steps). Each level
runs its own schedule and its child is refined from that level's final state; run.json, --plan, resume, the
training carry-over and scripts/set_sampling_defaults.py; bad counts are one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from gigagen.cli import main
from gigagen.config import RunConfig
from gigagen.engine.cascade import local_denoiser, plan_cascade, sample_cascade
from gigagen.engine.store import DiskStore, MemoryStore
from gigagen.engine.tiler import Tiling, step_plans
from gigagen.models.checkpoint import load_bundle, read_bundle_config, save_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.pipeline import _setup_model
from gigagen.runstate import fingerprint
from gigagen.sampling.schedules import ddim_timesteps
from gigagen.train import loop as L

from conftest import make_bundle
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "set_sampling_defaults.py"


class _Interrupt(Exception):
    pass


def _cascade(bundle: Path, n_steps: tuple[int, ...], tiling: Tiling, make_store=MemoryStore, fail_after: int | None = None,
             seen: dict[int, list[int]] | None = None) -> np.ndarray:
    """The finest level's final latent of a 200x168 slide; `seen` collects each level's timesteps in call order."""
    runner = BundleRunner(load_bundle(bundle, "cpu"), torch.device("cpu"), torch.bfloat16, ())
    cfg = runner.bundle.config
    plans = plan_cascade(200, 168, cfg.level_cells, cfg.magnifications, cfg.unet.divisor)
    calls = [0]

    def model_fn(x, t, level, cond):
        calls[0] += 1
        if fail_after is not None and calls[0] > fail_after:
            raise _Interrupt
        if seen is not None:
            seen.setdefault(level, []).append(int(t))
        return runner.model_fn(x, t, level, cond)

    schedules = [step_plans(runner.alphas_cumprod, ddim_timesteps(cfg.n_train_steps, n)) for n in n_steps]
    store = sample_cascade(plans, channels=cfg.ae.latent_ch, n_steps=n_steps, seed=3, tiling=tiling,
                           denoise=local_denoiser(model_fn, schedules, 0.0), make_store=make_store)
    return store.view(n_steps[0])[:, :, :]


def test_each_level_runs_its_own_schedule(tiny_bundle: Path) -> None:
    seen: dict[int, list[int]] = {}
    tiling = Tiling(tile=8, batch_size=5)
    mixed = _cascade(tiny_bundle, (2, 3, 5), tiling, seen=seen)
    for level, n in enumerate((2, 3, 5)):  # every step of a level's own schedule, in order, no other timestep
        assert list(dict.fromkeys(seen[level])) == [int(t) for t in ddim_timesteps(1000, n)]
    same = _cascade(tiny_bundle, (2, 2, 2), tiling)
    assert not np.allclose(mixed, same)  # the finest level is refined from other parents
    # still a function of the seed alone: any batch size and tile order gives the same latent
    np.testing.assert_array_equal(_cascade(tiny_bundle, (2, 3, 5), Tiling(tile=8, batch_size=1, order="shuffle")), mixed)


def test_an_interrupted_cascade_with_per_level_steps_resumes_exactly(tiny_bundle: Path, tmp_path: Path) -> None:
    tiling = Tiling(tile=8, batch_size=5)
    ref = _cascade(tiny_bundle, (2, 3, 5), tiling)
    root = str(tmp_path / "state")
    make = lambda spec: DiskStore(spec, root)  # noqa: E731
    seen: dict[int, list[int]] = {}
    _cascade(tiny_bundle, (2, 3, 5), tiling, seen=seen)
    per_step = max(calls.count(t) for calls in seen.values() for t in set(calls))  # network calls of the longest step
    interrupted = 0
    while True:  # killed a little after every step's worth of calls, then resumed from the committed steps
        try:
            last = _cascade(tiny_bundle, (2, 3, 5), tiling, make, fail_after=per_step + 1)
            break
        except _Interrupt:
            interrupted += 1
        assert interrupted < 100, "no progress between interruptions"
    assert interrupted >= 3
    np.testing.assert_array_equal(last, ref)
    # each level's own final state is what stays on disk
    assert sorted(p.name for p in (tmp_path / "state" / "L1").iterdir()) == ["s0003", "state.json"]


def _slide(bundle: Path, out: Path, *extra: str) -> dict:
    assert main(["slide", "--checkpoint", str(bundle), "--quiet", "--formats", "none", "--size", "256", "--seed", "2",
                 "--out", str(out), *extra]) == 0
    return json.loads((out / "run.json").read_text())


def _pixels(out: Path) -> np.ndarray:
    return zarr.open_group(str(out / "slide.ome.zarr"), mode="r")["0"][:]


def test_slide_takes_the_bundles_steps_or_the_flags_and_plans_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors", seed=3)
    stepped = make_bundle(tmp_path / "stepped.safetensors", seed=3, steps=(2, 3, 4))  # the same networks
    r = _slide(stepped, tmp_path / "s")
    assert r["config"]["steps"] == [2, 3, 4]
    told = _slide(plain, tmp_path / "t", "--steps", "2,3,4")
    np.testing.assert_array_equal(_pixels(tmp_path / "s"), _pixels(tmp_path / "t"))
    shapes = [lv["latent_shape"] for lv in r["levels"]]
    pixels = sum(n * h * w for n, (h, w) in zip((2, 3, 4), shapes))
    assert told["network_evaluations"]["unet_latent_pixels"] == pixels  # grid-shift: one evaluation per pixel and step
    assert told["network_evaluations"]["per_latent_pixel_per_step"] == 1.0
    assert _slide(stepped, tmp_path / "o", "--steps", "2")["config"]["steps"] == [2, 2, 2]  # one count: every level
    assert not np.array_equal(_pixels(tmp_path / "o"), _pixels(tmp_path / "s"))
    assert _slide(plain, tmp_path / "p")["config"]["steps"] == [20, 20, 20]  # a bundle without them: 20 each
    capsys.readouterr()
    args = ["slide", "--checkpoint", str(stepped), "--size", "256", "--seed", "2", "--plan"]
    assert main([*args, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["steps"] == [2, 3, 4] and planned["network_evaluations"]["unet_latent_pixels"] == pixels
    assert main(args) == 0
    assert "steps 2,3,4," in capsys.readouterr().out


def test_resume_tells_step_counts_apart(tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors", seed=3)
    cfg = RunConfig(width=256, height=256, out="x", seed=2, checkpoint=str(plain))
    fp = lambda c: fingerprint(_setup_model(c)[0], "m", "bfloat16", "cpu")  # noqa: E731
    assert json.loads(json.dumps(fp(cfg))) == fp(cfg)  # as a resumed run reads it back
    assert fp(cfg) == fp(dataclasses.replace(cfg, steps=(20,))) == fp(dataclasses.replace(cfg, steps=(20, 20, 20)))
    assert fp(cfg) != fp(dataclasses.replace(cfg, steps=(20, 40, 40)))


def _exit_code(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses what it cannot parse with code 2 and one line
        return exc.code


def test_bad_step_counts_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors")
    cases = (("2,3", "one per level"), ("0", "positive integer"), ("2,-1,2", "positive integer"),
             ("2,x", "comma-separated whole numbers"), ("1001", "at most 1000"))
    for i, (flag, words) in enumerate(cases):
        out = tmp_path / f"x{i}"
        assert _exit_code(["slide", "--checkpoint", str(plain), "--size", "256", "--seed", "1", "--quiet", "--out", str(out),
                           "--steps", flag]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "Traceback" not in err and len(err.splitlines()) <= 2, err  # argparse adds its usage line
        assert not out.exists()
    b = load_bundle(plain)
    for bad in ((20, 20), (20, 20, 20, 20), (20, 0, 20), (20, 20, 1001)):  # a bundle cannot claim them either
        with pytest.raises(ValueError, match="steps"):
            save_bundle(tmp_path / "c.safetensors", dataclasses.replace(b.config, steps=bad), b.ae, b.unet)
    assert not (tmp_path / "c.safetensors").exists()


def test_training_carries_the_steps_and_the_script_sets_them(png: Path, tmp_path: Path) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a"), log=lambda s: None, progress=False)
    assert read_bundle_config(first).steps == ()
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *a], capture_output=True, text=True)  # noqa: E731
    stepped = tmp_path / "stepped.safetensors"
    r = run(str(first), "--out", str(stepped), "--steps", "3,6,6")
    assert r.returncode == 0, r.stderr
    assert read_bundle_config(stepped).steps == (3, 6, 6)
    assert run(str(first), "--out", str(tmp_path / "one.safetensors"), "--steps", "7").returncode == 0
    assert read_bundle_config(tmp_path / "one.safetensors").steps == (7, 7, 7)
    bad = run(str(first), "--out", str(tmp_path / "bad.safetensors"), "--steps", "3,6")
    assert bad.returncode == 2 and "steps" in bad.stderr and not (tmp_path / "bad.safetensors").exists()
    args = ["train", str(png), "--mpp", "0.5", "--init-from", str(stepped), "--unet-max-steps", "2", "--decoder-every", "0",
            "--unet-batch", "2", "--threads", "1", "--quiet", "--out", str(tmp_path / "b")]
    assert main(args) == 0  # a fine-tune keeps the measured steps, as it keeps the guidance weights
    assert read_bundle_config(tmp_path / "b" / "bundle.safetensors").steps == (3, 6, 6)
