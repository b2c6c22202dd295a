"""gigagen train --sampled-parents: the finest level also learns from 5x parents its starting bundle samples."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gigagen.cli import main
from gigagen.errors import UserError
from gigagen.models.checkpoint import load_bundle
from gigagen.models.denoiser import BundleRunner
from gigagen.train import loop as L
from gigagen.train import sampled_parents as S
from test_train import fake_he, tiny_cfg

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small training image and a tiny bundle trained on it (every variant's 5x level is sampled, so it is small)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("sp")
    p = d / "he.png"
    Image.fromarray(fake_he(160, 128)).save(p)
    return p, L.train(tiny_cfg(p, d / "a"), log=lambda s: None, progress=False)


def variant_latents(png: Path, bundle: Path) -> list[list[np.ndarray]]:
    b = load_bundle(bundle)
    cfg = tiny_cfg(png, png.parent / "unused")
    ls = L.encode_all(L.load_training_levels(cfg), b.ae, cfg, CPU, torch.bfloat16, lambda s: None, orientations=2)
    return ls.scaled(b.config.level_scales).latents


def test_sampled_parents_are_5x_levels_drawn_from_redrawn_layouts_deterministically(trained: tuple[Path, Path], tmp_path: Path) -> None:
    png, first = trained
    lat = variant_latents(png, first)
    logs: list[str] = []
    out = S.sample_parents(first, lat, (200, 900), CPU, logs.append, False, cache=tmp_path / "sp.npz")
    assert len(out) == len(lat) == 2 and all(len(o) == 2 for o in out)
    for o, v in zip(out, lat):
        assert all(s.shape == v[1].shape and s.dtype == np.float32 for s in o)
        assert all(float(np.abs(s - v[1]).mean()) > 0.05 for s in o)  # drawn, not the real 5x level
    assert not any("read from" in m for m in logs)
    again = S.sample_parents(first, lat, (200, 900), CPU, logs.append, False)  # no cache: sampled again, the same
    assert all(np.array_equal(p, q) for o, a in zip(out, again) for p, q in zip(o, a))
    cached = S.sample_parents(first, lat, (200, 900), CPU, logs.append, False, cache=tmp_path / "sp.npz")
    assert "read from" in logs[-1] and all(np.array_equal(p, q) for o, a in zip(out, cached) for p, q in zip(o, a))
    other = S.sample_parents(first, lat, (200,), CPU, logs.append, False, cache=tmp_path / "sp.npz")
    assert "read from" not in logs[-1] and np.array_equal(other[0][0], out[0][0])  # another key: sampled, seeded alike
    (tmp_path / "sp.npz").write_bytes(b"damaged")
    S.sample_parents(first, lat, (200,), CPU, logs.append, False, cache=tmp_path / "sp.npz")  # sampled again, no error
    with pytest.raises(UserError, match="three levels"):
        S.sample_parents(first, [v[:2] for v in lat], (200,), CPU, logs.append, False)


def test_parent_source_redraws_the_5x_level_itself_near_the_real_one(trained: tuple[Path, Path], tmp_path: Path) -> None:
    png, first = trained
    lat = variant_latents(png, first)
    logs: list[str] = []
    cache = tmp_path / "sp.npz"
    layout = S.sample_parents(first, lat, (300,), CPU, logs.append, False, cache=cache)
    near = S.sample_parents(first, lat, (300,), CPU, logs.append, False, cache=cache, source="parent")
    assert "read from" not in logs[-1] and "each redrawn from t0 [300]" in logs[-1]  # another cache key
    far = S.sample_parents(first, lat, (950,), CPU, logs.append, False, source="parent")
    for v, a, b, c in zip(lat, layout, near, far):
        assert b[0].shape == v[1].shape and b[0].dtype == np.float32
        err = {name: float(np.abs(s[0] - v[1]).mean()) for name, s in (("layout", a), ("near", b), ("far", c))}
        # redrawn from t0 300 keeps the real 5x level's places: nearer to it than a redraw from 950 or a level
        # sampled from noise, yet not the real level itself
        assert 0.01 < err["near"] < err["far"] and err["near"] < err["layout"]
    again = S.sample_parents(first, lat, (300,), CPU, logs.append, False, cache=cache, source="parent")
    assert "read from" in logs[-1] and all(np.array_equal(p[0], q[0]) for p, q in zip(near, again))
    with pytest.raises(ValueError, match="source"):
        S.sample_parents(first, lat, (300,), CPU, logs.append, False, source="5x")


def test_layout_redraw_keeps_the_real_layout_more_the_lower_t0(trained: tuple[Path, Path]) -> None:
    png, first = trained
    b = load_bundle(first)
    c = b.config
    runner = BundleRunner(b, CPU, torch.bfloat16, c.guidance_per_level, c.autoguidance)
    v = variant_latents(png, first)[0]
    err = {t0: float(np.abs(S.redraw_layout(runner, v, t0, seed=3) - v[2]).mean()) for t0 in (100, 950)}
    assert S.redraw_layout(runner, v, 100, seed=3).shape == v[2].shape
    assert 0 < err[100] < err[950]


def test_unet_batch_gives_the_finest_level_sampled_parents_at_the_set_share(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "x.png", tmp_path / "run", unet_batch=64, sampled_parent_prob=1.0)
    real = [np.zeros((2, 32, 32), np.float32), np.ones((2, 8, 8), np.float32), np.full((2, 2, 2), 3.0, np.float32)]
    ls = L.LatentSet([real], [[np.ones(a.shape[1:], bool) for a in real]])
    sampled = [[np.full((2, 8, 8), 5.0, np.float32)]]
    _, cond, _, _ = L.unet_batch(ls, cfg, 0, np.random.default_rng(0), sampled=sampled)
    assert np.allclose(cond, 5.0)  # every finest crop got the sampled parent
    _, cond, _, _ = L.unet_batch(ls, dataclasses.replace(cfg, sampled_parent_prob=0.5), 0, np.random.default_rng(0), sampled=sampled)
    share = float(np.mean([np.allclose(c, 5.0) for c in cond]))
    assert 0.3 < share < 0.7 and np.all(np.isclose(cond, 5.0) | np.isclose(cond, 1.0))
    _, cond, _, _ = L.unet_batch(ls, cfg, 1, np.random.default_rng(0), sampled=sampled)
    assert np.allclose(cond, 3.0)  # the 5x level keeps its real parent
    _, cond, _, _ = L.unet_batch(ls, cfg, 0, np.random.default_rng(0))
    assert np.allclose(cond, 1.0)  # without sampled parents: the real one


def test_train_with_sampled_parents_records_them_and_the_cli_checks_them(trained: tuple[Path, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    png, first = trained
    logs: list[str] = []
    cfg = tiny_cfg(png, tmp_path / "b", init_from=str(first), unet_max_steps=5, decoder_every=0, sampled_parents=(300,),
                   coarse_warps=1)
    out = L.train(cfg, log=logs.append, progress=False)
    # one image x 8 orientations; the coarse warp's 8 variants are never drawn at 20x and get none
    assert any(m.startswith("sampled parents: 8 5x levels") and "layouts redrawn" in m for m in logs)
    assert load_bundle(out).config.training["sampled_parents"] == {"t0": [300], "prob": 0.5}
    logs.clear()
    tight = dataclasses.replace(cfg, out=str(tmp_path / "p"), sampled_parents_from="parent")
    out = L.train(tight, log=logs.append, progress=False)
    assert any(m.startswith("sampled parents: 8 5x levels") and "each redrawn" in m for m in logs)
    assert load_bundle(out).config.training["sampled_parents"] == {"t0": [300], "prob": 0.5, "from": "parent"}
    # a resume keeps the run's sampled parents: other ones, or none, are refused before any training
    for other in (dict(sampled_parents_from="layout"), dict(sampled_parents=()), dict(sampled_parent_prob=0.7)):
        with pytest.raises(UserError, match="--sampled-parents-from parent; resume it with the same options"):
            L.train(dataclasses.replace(tight, unet_max_steps=6, **other), resume=True, log=logs.append, progress=False)
    assert (tmp_path / "b" / "sampled_parents.npz").is_file()
    assert [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "loss.csv")) if r["phase"] == "unet"] == [4, 5]
    logs.clear()
    L.train(dataclasses.replace(cfg, unet_max_steps=6), resume=True, log=logs.append, progress=False)
    assert any("read from" in m for m in logs)  # a resumed run reads its sampled parents back
    base = ["train", str(png), "--mpp", "0.5", "--quiet", "--out", str(tmp_path / "e")]
    for extra, text in ((["--sampled-parents", "300"], "--init-from"),
                        (["--init-from", str(first), "--sampled-parents", "0"], "[1, 1000)"),
                        (["--init-from", str(first), "--sampled-parents", "1000"], "[1, 1000)"),
                        (["--init-from", str(first), "--sampled-parents", "300", "--sampled-parent-prob", "0"], "(0, 1]"),
                        (["--guide-of", str(first), "--sampled-parents", "300"], "--init-from"),
                        (["--init-from", str(first), "--sampled-parents-from", "parent"], "give --sampled-parents")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1 and not (tmp_path / "e").exists()
