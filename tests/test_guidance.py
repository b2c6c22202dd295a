"""Classifier-free guidance per refinement level: a bundle's default weights (BundleConfig.guidance),
`gigagen slide --guidance` (one weight for all levels, or one per level), run.json, --plan, resume, and
`gigagen train --guidance` recording and carrying them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from gigagen.cli import main
from gigagen.config import RunConfig
from gigagen.models.checkpoint import load_bundle, read_bundle_config, save_bundle
from gigagen.pipeline import _setup_model
from gigagen.runstate import fingerprint
from gigagen.train import loop as L

from conftest import make_bundle
from test_train import png, tiny_cfg  # noqa: F401 - the fixture is used by name


def _slide(bundle: Path, out: Path, *extra: str) -> dict:
    assert main(["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", "--size", "256",
                 "--seed", "2", "--out", str(out), *extra]) == 0
    return json.loads((out / "run.json").read_text())


def _exit_code(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses what it cannot parse with code 2 and one line
        return exc.code


def _pixels(out: Path) -> np.ndarray:
    return zarr.open_group(str(out / "slide.ome.zarr"), mode="r")["0"][:]


def test_slide_guides_each_level_as_the_bundle_says_and_records_it(tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors", seed=3)  # no weights given: 1 at every level
    guided = make_bundle(tmp_path / "guided.safetensors", seed=3, guidance=(1.0, 3.0))  # the same networks
    r_plain, r_guided = _slide(plain, tmp_path / "p"), _slide(guided, tmp_path / "g")
    r_told = _slide(plain, tmp_path / "t", "--guidance", "1,3")
    assert r_plain["config"]["guidance"] == [1.0, 1.0] and r_guided["config"]["guidance"] == [1.0, 3.0]
    np.testing.assert_array_equal(_pixels(tmp_path / "g"), _pixels(tmp_path / "t"))  # as if told --guidance 1,3
    assert not np.array_equal(_pixels(tmp_path / "g"), _pixels(tmp_path / "p"))
    # the 5x level takes a second pass per tile, the 20x level does not
    extra = r_guided["network_evaluations"]["unet_latent_pixels"] - r_plain["network_evaluations"]["unet_latent_pixels"]
    five_x = r_plain["levels"][1]["latent_shape"]
    assert extra == 3 * five_x[0] * five_x[1]
    # one weight means every refinement level; the command line overrides the bundle
    assert _slide(guided, tmp_path / "o", "--guidance", "1")["config"]["guidance"] == [1.0, 1.0]
    np.testing.assert_array_equal(_pixels(tmp_path / "o"), _pixels(tmp_path / "p"))
    assert _slide(plain, tmp_path / "a", "--guidance", "2")["config"]["guidance"] == [2.0, 2.0]


def test_plan_counts_the_guided_levels_and_resume_checks_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guided = make_bundle(tmp_path / "guided.safetensors", seed=3, guidance=(1.0, 3.0))
    args = ["slide", "--checkpoint", str(guided), "--steps", "3", "--size", "256", "--seed", "2", "--plan"]
    capsys.readouterr()
    assert main(args + ["--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    record = _slide(guided, tmp_path / "g")
    assert planned["network_evaluations"]["unet_latent_pixels"] == record["network_evaluations"]["unet_latent_pixels"]
    # a resumed run compares the fingerprint it reads back from JSON: the same weights match, others do not
    cfg = RunConfig(width=256, height=256, out="x", seed=2, checkpoint=str(guided))
    fp = lambda c: fingerprint(_setup_model(c)[0], "m", "bfloat16", "cpu")  # noqa: E731
    assert json.loads(json.dumps(fp(cfg))) == fp(cfg)
    assert fp(cfg) == fp(dataclasses.replace(cfg, guidance=(1.0, 3.0)))
    assert fp(cfg) != fp(dataclasses.replace(cfg, guidance=(2.0,)))


def test_bad_weights_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_bundle(tmp_path / "plain.safetensors")
    for flag, words in (("1,2,3", "one per refinement level"), ("-1", ">= 0"), ("1,x", "comma-separated numbers")):
        out = tmp_path / f"x{len(flag)}"
        assert _exit_code(["slide", "--checkpoint", str(plain), "--size", "256", "--seed", "1", "--quiet", "--out", str(out),
                           "--guidance", flag]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "Traceback" not in err
        assert not out.exists()
    b = load_bundle(plain)
    for bad in ((1.0,), (1.0, 2.0, 3.0), (1.0, -2.0)):  # a bundle cannot claim weights for levels it lacks either
        with pytest.raises(ValueError, match="guidance"):
            save_bundle(tmp_path / "c.safetensors", dataclasses.replace(b.config, guidance=bad), b.ae, b.unet)
    assert not (tmp_path / "c.safetensors").exists()


def test_train_records_carries_and_checks_the_weights(png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = L.train(tiny_cfg(png, tmp_path / "a", guidance=(1.0, 2.5)), log=lambda s: None, progress=False)
    assert read_bundle_config(first).guidance == (1.0, 2.5)
    args = ["train", str(png), "--mpp", "0.5", "--init-from", str(first), "--unet-max-steps", "2", "--decoder-every", "0",
            "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # --init-from carries them
    assert read_bundle_config(tmp_path / "b" / "bundle.safetensors").guidance == (1.0, 2.5)
    assert main([*args, "--out", str(tmp_path / "c"), "--guidance", "2"]) == 0  # one weight: every level
    assert read_bundle_config(tmp_path / "c" / "bundle.safetensors").guidance == (2.0, 2.0)
    guide = ["train", str(png), "--mpp", "0.5", "--guide-of", str(first), "--unet-base", "4", "--unet-mult", "1,2",
             "--unet-max-steps", "2", "--unet-batch", "2", "--threads", "1", "--quiet"]
    assert main([*guide, "--out", str(tmp_path / "g")]) == 0  # a guide run keeps the bundle's
    assert read_bundle_config(tmp_path / "g" / "bundle.safetensors").guidance == (1.0, 2.5)
    capsys.readouterr()
    for flags in (["--guidance", "1,2,3"], ["--guidance", "-1"], ["--decoder-of", str(first), "--guidance", "2"]):
        assert main(["train", str(png), "--mpp", "0.5", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "--guidance" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_set_sampling_defaults_changes_the_config_and_keeps_the_weights(tmp_path: Path) -> None:
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).resolve().parents[1] / "scripts" / "set_sampling_defaults.py"
    src, new = make_bundle(tmp_path / "a.safetensors"), tmp_path / "b.safetensors"
    before = src.read_bytes()
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True)  # noqa: E731
    assert run(str(src), "--out", str(new), "--guidance", "1,2.5").returncode == 0
    cfg = read_bundle_config(new)
    assert cfg.guidance == (1.0, 2.5) and cfg.training["sampling_defaults"]["from"] == load_bundle(src).identity
    a, b = load_file(str(src)), load_file(str(new))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    for args in ((str(src), "--out", str(new), "--guidance", "2"), (str(src), "--out", str(tmp_path / "c.safetensors"), "--guidance", "1,2,3")):
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert read_bundle_config(new).guidance == (1.0, 2.5) and src.read_bytes() == before  # nothing overwritten
    assert not (tmp_path / "c.safetensors").exists()
