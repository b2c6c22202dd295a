"""Autoguidance (Karras et al. 2024): a bundle's small guide network, its arithmetic, its costs and its CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file

from gigagen.cli import main
from gigagen.config import RunConfig
from gigagen.errors import UserError
from gigagen.models.checkpoint import META_KEY, load_bundle, save_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.pipeline import with_autoguidance
from gigagen.runstate import fingerprint
from gigagen.sampling.ddim import split_prediction

from conftest import tiny_config
from test_engine import _sample
from gigagen.engine.tiler import Tiling


def _runner(path: Path, autoguidance: float) -> BundleRunner:
    return BundleRunner(load_bundle(path), torch.device("cpu"), torch.bfloat16, autoguidance=autoguidance)


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 4, 8, 8)).astype(np.float32), rng.standard_normal((3, 4, 8, 8)).astype(np.float32)


def test_bundle_round_trips_its_guide_and_default_weight(guided_bundle: Path) -> None:
    b = load_bundle(guided_bundle)
    assert b.guide is not None and b.config.guide is not None and b.config.guide.base_ch == 8
    assert b.config.autoguidance == 2.0 and b.config.guide_levels == (0, 1)
    assert sum(p.numel() for p in b.guide.parameters()) < sum(p.numel() for p in b.unet.parameters())


def test_output_is_guide_plus_weight_times_the_difference(guided_bundle: Path) -> None:
    x, cond = _inputs()
    runner = _runner(guided_bundle, 2.5)
    xt, ct = runner._tensor(x), runner._tensor(cond)
    main_out = runner._net(runner.bundle.unet, xt, 700, 0, ct, 1.0)
    weak = runner._net(runner.bundle.guide, xt, 700, 0, ct, 1.0)
    assert not torch.allclose(main_out, weak)  # the two networks differ, so the test can tell them apart
    want_x0, want_eps = split_prediction(weak + 2.5 * (main_out - weak), xt, float(runner.alphas_cumprod[700]), "v")
    x0, eps = runner.model_fn(x, 700, 0, cond)
    np.testing.assert_allclose(x0, want_x0.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eps, want_eps.numpy(), rtol=1e-5, atol=1e-5)
    assert runner.counters.guide_tiles == runner.counters.unet_tiles == 3  # model_fn: one pass of each


def test_weight_one_or_an_unguided_level_equals_the_plain_model(guided_bundle: Path, tiny_bundle: Path) -> None:
    x, cond = _inputs(1)
    off, on = _runner(guided_bundle, 1.0), _runner(guided_bundle, 2.0)
    plain = BundleRunner(load_bundle(tiny_bundle), torch.device("cpu"), torch.bfloat16)  # same seed, same main weights
    for a, b in zip(off.model_fn(x, 300, 1, cond), plain.model_fn(x, 300, 1, cond)):
        np.testing.assert_array_equal(a, b)
    assert off.counters.guide_tiles == 0 and off.counters.unet_tiles == 3
    # the guide was not trained on the layout level (2), so there it is not used
    for a, b in zip(on.model_fn(x, 300, 2, None), plain.model_fn(x, 300, 2, None)):
        np.testing.assert_array_equal(a, b)
    assert on.counters.guide_tiles == 0
    assert not np.array_equal(on.model_fn(x, 300, 1, cond)[0], plain.model_fn(x, 300, 1, cond)[0])


def test_autoguided_sampling_is_independent_of_batch_size_and_order(guided_bundle: Path) -> None:
    runner = _runner(guided_bundle, 2.0)
    ref = _sample(runner, 200, 168, Tiling(tile=8, batch_size=16))
    for batch, order in [(1, "raster"), (5, "shuffle")]:
        np.testing.assert_array_equal(_sample(runner, 200, 168, Tiling(tile=8, batch_size=batch, order=order)), ref)
    unguided = _sample(_runner(guided_bundle, 1.0), 200, 168, Tiling(tile=8))
    assert np.abs(unguided - ref).max() > 1e-3


def test_a_weight_other_than_one_needs_a_guide(tiny_bundle: Path) -> None:
    with pytest.raises(UserError, match="guide network"):
        _runner(tiny_bundle, 2.0)
    with pytest.raises(ValueError, match="autoguidance"):
        save_bundle(Path("unused.safetensors"), tiny_config(autoguidance=2.0), None, None)  # type: ignore[arg-type]
    guide = tiny_config().unet
    for levels in ((), (3,)):  # a guide must guide some level of the cascade, and only its levels
        with pytest.raises(ValueError, match="guide_levels"):
            save_bundle(Path("unused.safetensors"), tiny_config(guide=guide, guide_levels=levels), None, None, None)  # type: ignore[arg-type]


def test_stray_tensors_in_a_bundle_are_refused(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_bundle), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny_bundle)) | {"guide.stem.weight": torch.zeros(1)}
    bad = tmp_path / "stray.safetensors"
    save_file(tensors, str(bad), metadata={META_KEY: meta[META_KEY]})
    with pytest.raises(UserError, match="unexpected tensors"):
        load_bundle(bad)


def test_the_run_records_the_weight_it_used_and_resume_checks_it(guided_bundle: Path, tiny_bundle: Path) -> None:
    cfg = RunConfig(width=64, height=64, out="x", seed=1)
    guided, plain = load_bundle(guided_bundle), load_bundle(tiny_bundle)
    assert with_autoguidance(cfg, guided).autoguidance == 2.0  # the model's default
    assert with_autoguidance(cfg, plain).autoguidance == 1.0
    assert with_autoguidance(dataclasses.replace(cfg, autoguidance=3.0), guided).autoguidance == 3.0
    with pytest.raises(UserError, match="guide network"):
        with_autoguidance(dataclasses.replace(cfg, autoguidance=3.0), plain)
    # a resumed run that names no weight gets the same default, hence the same fingerprint; another weight does not
    fp = lambda c: fingerprint(with_autoguidance(c, guided), guided.identity, "bfloat16", "cpu")  # noqa: E731
    assert fp(cfg) == fp(dataclasses.replace(cfg, autoguidance=2.0))
    assert fp(cfg) != fp(dataclasses.replace(cfg, autoguidance=3.0))


def _slide(bundle: Path, out: Path, *extra: str) -> int:
    return main(["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", "--size", "200",
                 "--seed", "4", "--out", str(out), *extra])


def test_cli_default_weight_and_counts(guided_bundle: Path, tmp_path: Path) -> None:
    assert _slide(guided_bundle, tmp_path / "a") == 0
    assert _slide(guided_bundle, tmp_path / "b", "--autoguidance", "1") == 0
    ra, rb = (json.loads((tmp_path / n / "run.json").read_text()) for n in ("a", "b"))
    assert ra["config"]["autoguidance"] == 2.0 and rb["config"]["autoguidance"] == 1.0
    ea, eb = ra["network_evaluations"], rb["network_evaluations"]
    layout_pixels = 3 * int(np.prod(ra["levels"][2]["latent_shape"]))  # 3 steps of the unguided layout level
    assert ea["guide_latent_pixels"] == ea["unet_latent_pixels"] - layout_pixels > 0
    assert 0 < ea["guide_tiles"] < ea["unet_tiles"]
    assert eb["guide_tiles"] == 0 and eb["unet_tiles"] == ea["unet_tiles"]
    pa, pb = (zarr.open_group(str(tmp_path / n / "slide.ome.zarr"), mode="r")["0"][:] for n in ("a", "b"))
    assert not np.array_equal(pa, pb)


def test_cli_plan_counts_the_guide(guided_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slide", "--checkpoint", str(guided_bundle), "--size", "512", "--plan", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)["network_evaluations"]
    assert 0 < ev["guide_tiles"] < ev["unet_tiles"]  # the layout level is not guided
    assert main(["slide", "--checkpoint", str(guided_bundle), "--size", "512", "--plan", "--json", "--autoguidance", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["network_evaluations"]["guide_tiles"] == 0


@pytest.mark.parametrize("flag", ["2", "-1"])
def test_cli_bad_weight_is_one_line_and_writes_nothing(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    out = tmp_path / "never"
    assert _slide(tiny_bundle, out, "--autoguidance", flag) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "autoguidance" in err and "Traceback" not in err
    assert not out.exists()
