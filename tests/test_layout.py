"""A layout level made of deformed fragments of the exemplar (engine.layout, BundleConfig.layout,
scripts/set_sampling_defaults.py --layout)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_slide
from gigagen.engine.grid import Tiling
from gigagen.engine.layout import LayoutSpec, layout_exemplar, render_layout, validate_layout, write_layout_level
from gigagen.engine.store import DiskStore, LevelSpec
from gigagen.models.checkpoint import load_bundle, read_bundle_config, save_like
from gigagen.train import data as D
from test_exemplar import block_encode, exemplar_bundle  # noqa: F401  (exemplar_bundle is a fixture)
from test_train import PINK, PURPLE

ROOT = Path(__file__).resolve().parents[1]
BG = 245


def skin(h: int = 60, w: int = 48) -> np.ndarray:
    """A small exemplar: tissue running top to bottom out of the frame (cut where the scan ended, as the real one is),
    pink with a purple band down its left side (an 'epidermis' a sixth of the tissue)."""
    img = np.full((h, w, 3), BG, np.uint8)
    img[:, 8:44] = PINK
    img[:, 8:14] = PURPLE
    return img


@pytest.fixture(scope="module")
def ex():
    img = skin()
    return layout_exemplar(img, D.tissue_mask(img))


def test_a_region_equals_the_same_region_of_the_whole_layout(ex) -> None:
    """Any region, also one above or left of the slide's origin, renders exactly as that window of a larger render:
    fragments are drawn per cell and composited by a rule that does not depend on which region asks."""
    spec = LayoutSpec(cell=40)
    whole = render_layout(ex, spec, 5, 3, -30, -20, 240, 240)
    for y0, x0, h, w in ((0, 0, 64, 64), (-30, -20, 17, 90), (77, 131, 59, 41), (150, 3, 50, 200)):
        got = render_layout(ex, spec, 5, 3, y0, x0, h, w)
        np.testing.assert_array_equal(got, whole[y0 + 30 : y0 + 30 + h, x0 + 20 : x0 + 20 + w])


def test_fragments_are_the_exemplars_tissue_and_the_seed_and_level_matter(ex) -> None:
    """The layout is background and the exemplar's own tissue in about its proportions (purple a sixth of it; the cut
    edges of the scan never show as straight lines of tissue), the same (seed, level) gives the same pixels, another
    seed or level other ones."""
    spec = LayoutSpec(cell=40)
    a = render_layout(ex, spec, 1, 3, 0, 0, 240, 240)
    dist = lambda c: np.abs(a.astype(int) - np.array(c)).sum(-1)  # noqa: E731
    bg, pink, purple = (dist((BG,) * 3) < 30).mean(), (dist(PINK) < 40).mean(), (dist(PURPLE) < 40).mean()
    assert bg + pink + purple > 0.9  # the rest: the soft outline and interpolation between the colours
    assert 0.1 < pink + purple < 0.9 and bg > 0.05 and 0.1 < purple / (pink + purple) < 0.3
    np.testing.assert_array_equal(render_layout(ex, spec, 1, 3, 0, 0, 240, 240), a)
    assert (render_layout(ex, spec, 2, 3, 0, 0, 240, 240) != a).any(-1).mean() > 0.1
    assert (render_layout(ex, spec, 1, 2, 0, 0, 240, 240) != a).any(-1).mean() > 0.1
    # a fragment is turned and bent, not pasted: no window of the layout is the exemplar in one of its orientations
    from gigagen.engine.grid import dihedral

    for o in range(8):
        e = dihedral(skin(), o)
        h, w = e.shape[:2]
        assert not any((a[y : y + h, x : x + w] == e).all() for y in range(0, 240 - h, 4) for x in range(0, 240 - w, 4))


def test_presence_and_cell_set_how_much_tissue(ex) -> None:
    """Fewer fragments (presence) or farther apart (cell) mean less tissue; every cell holding one (the default) leaves
    no large region empty."""
    cover = lambda spec: np.mean([D.tissue_mask(render_layout(ex, spec, s, 3, 0, 0, 160, 160)).mean() for s in range(6)])  # noqa: E731
    full, half, sparse = cover(LayoutSpec(cell=40)), cover(LayoutSpec(cell=40, presence=0.5)), cover(LayoutSpec(cell=80))
    assert full > 1.5 * half and full > 1.5 * sparse
    for s in range(6):
        assert D.tissue_mask(render_layout(ex, LayoutSpec(cell=40), s, 3, 0, 0, 80, 80)).mean() > 0.05


def test_bad_layout_specs_and_configs_are_refused(exemplar_bundle, tmp_path: Path) -> None:  # noqa: F811
    for bad in (dict(cell=8), dict(presence=0), dict(presence=1.5), dict(scale=1), dict(strain=-1), dict(lobes=0.3)):
        with pytest.raises(ValueError):
            validate_layout(LayoutSpec(**bad))
    with pytest.raises(ValueError, match="both tissue and background"):
        layout_exemplar(skin(), np.ones((60, 48), bool))
    b = load_bundle(exemplar_bundle[1])
    with pytest.raises(ValueError, match="needs an exemplar"):
        save_like(tmp_path / "x.safetensors", b, dataclasses.replace(b.config, exemplar=None, decoded_level=None, layout=LayoutSpec()))
    with pytest.raises(ValueError):
        save_like(tmp_path / "x.safetensors", b, dataclasses.replace(b.config, layout=LayoutSpec(cell=4)))
    assert not (tmp_path / "x.safetensors").exists()


def test_write_layout_level_encodes_the_render_in_any_tiles(ex, tmp_path: Path) -> None:
    """The level written into a disk store (grid-shifted tiles, each rendered with its halo and encoded) is the
    encoding of the whole render, for an encoder whose cells see only their own pixels; written once: a second call
    (a resumed run) changes nothing."""
    spec, f = LayoutSpec(cell=40), 8
    store = DiskStore(LevelSpec(3, (24, 20), 12, seed=6, tiling=Tiling(tile=12, divisor=4)), str(tmp_path / "state"))
    calls: list[tuple[int, int]] = []

    def encode(px: np.ndarray) -> np.ndarray:
        calls.append(px.shape[:2])
        return block_encode(px) * 2.0

    write_layout_level(store, ex, spec, encode, f, n_steps=4)
    assert store.completed() == 4 and len(calls) > 1  # more than one tile
    want = block_encode(render_layout(ex, spec, 6, 3, 0, 0, 24 * f, 20 * f)) * 2.0
    np.testing.assert_allclose(store.view(4)[:, 0:24, 0:20], want, atol=1e-6)
    n = len(calls)
    write_layout_level(store, ex, spec, encode, f, n_steps=4)
    assert len(calls) == n


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "set_sampling_defaults.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_a_slide_with_a_fragment_layout(exemplar_bundle, tmp_path: Path) -> None:  # noqa: F811
    """set_sampling_defaults.py --layout turns it on (and records it); a slide then writes its layout level from
    fragments (run.json says so) with fewer network calls than the same bundle sampling it, and looks different."""
    _, bundle = exemplar_bundle
    out = tmp_path / "frag.safetensors"
    r = run_script(str(bundle), "--out", str(out), "--layout", "cell=32,presence=1")
    assert r.returncode == 0, r.stderr
    c = read_bundle_config(out)
    assert c.layout == LayoutSpec(cell=32, presence=1.0)
    assert c.training["sampling_defaults"]["changed"]["layout"]["cell"] == 32
    made, px = tiny_slide(out, tmp_path / "frag")
    assert made[-1].startswith("fragments of the exemplar") and made[-2] == "denoiser"
    made0, px0 = tiny_slide(bundle, tmp_path / "sampled")
    assert made0[-1] == "denoiser"
    calls = [json.loads((tmp_path / d / "run.json").read_text())["network_evaluations"]["unet_calls"] for d in ("frag", "sampled")]
    assert calls[0] < calls[1]
    assert (px != px0).any()
    back = tmp_path / "back.safetensors"
    assert run_script(str(out), "--out", str(back), "--layout", "sampled").returncode == 0
    assert read_bundle_config(back).layout is None


@pytest.mark.parametrize("value", ["cells=3", "cell=", "cell=big", "scale=2"])
def test_set_sampling_defaults_refuses_bad_layouts(exemplar_bundle, tmp_path: Path, value: str) -> None:  # noqa: F811
    _, bundle = exemplar_bundle
    r = run_script(str(bundle), "--out", str(tmp_path / "x.safetensors"), "--layout", value)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "layout" in r.stderr, r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_a_layout_needs_an_exemplar_bundle(tmp_path: Path) -> None:
    from conftest import make_bundle

    src = make_bundle(tmp_path / "plain.safetensors")
    r = run_script(str(src), "--out", str(tmp_path / "x.safetensors"), "--layout", "fragments")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exemplar" in r.stderr, r.stderr
    assert not (tmp_path / "x.safetensors").exists()



def test_the_plan_counts_the_fragment_layout(exemplar_bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """`gigagen slide --plan` times the layout's rendering and encoding, adds it to the total, and counts no network
    evaluations for that level."""
    from gigagen.cli import main

    _, bundle = exemplar_bundle
    out = tmp_path / "frag.safetensors"
    assert run_script(str(bundle), "--out", str(out), "--layout", "fragments").returncode == 0
    plans = []
    for b in (bundle, out):
        assert main(["slide", "--size", "512", "--seed", "1", "--steps", "2", "--checkpoint", str(b), "--plan", "--json"]) == 0
        plans.append(json.loads(capsys.readouterr().out))
    sec = plans[1]["seconds_on_this_machine"]
    assert sec["layout"] >= 0 and "layout" not in plans[0]["seconds_on_this_machine"]  # rounded to 0.1 s: a tiny level may show 0
    assert sec["total"] == pytest.approx(sum(v for k, v in sec.items() if k != "total"), abs=0.31)
    top = plans[0]["levels"][-1]["latent_shape"]
    ev = [p["network_evaluations"]["unet_latent_pixels"] for p in plans]
    assert ev[0] - ev[1] == 2 * top[0] * top[1]  # the layout level's 2 steps over its whole latent, no longer sampled
    assert main(["slide", "--size", "512", "--steps", "2", "--checkpoint", str(out), "--plan"]) == 0
    assert "fragment layout" in capsys.readouterr().out


@pytest.mark.parametrize("budget", ["2GiB", "0"])  # latents in memory (checkpointed) and in per-tile files
def test_a_run_killed_around_the_fragment_layout_resumes_to_the_same_pixels(exemplar_bundle, tmp_path: Path,  # noqa: F811
                                                                            budget: str) -> None:
    """SIGKILL right after the layout level was written and while the 5x latent is sampled: the resumed slide equals
    an uninterrupted one pixel for pixel."""
    from test_resume import _cmd, _completed, _kill_when, _pixels

    out_bundle = tmp_path / "frag.safetensors"
    assert run_script(str(exemplar_bundle[1]), "--out", str(out_bundle), "--layout", "cell=32").returncode == 0
    ref, out = tmp_path / "ref", tmp_path / "slide"
    subprocess.run(_cmd(out_bundle, ref), check=True)
    cmd = _cmd(out_bundle, out, "--memory-budget", budget)
    _kill_when(cmd, lambda: _completed(out, 3) >= 1)  # the layout commits all its steps at once
    _kill_when(cmd + ["--resume"], lambda: _completed(out, 2) >= 2)
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for got, want in zip(_pixels(out), _pixels(ref), strict=True):
        np.testing.assert_array_equal(got, want)
    assert json.loads((out / "run.json").read_text())["levels"][3]["made_by"].startswith("fragments")


def _slide(bundle: Path, out: Path, *extra: str) -> tuple[dict, np.ndarray]:
    from gigagen.cli import main
    from gigagen.io.omezarr import open_slide

    args = ["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", "--size", "256",
            "--seed", "4", "--out", str(out), *extra]
    assert main(args) == 0
    r = open_slide(out)
    return json.loads((out / "run.json").read_text()), r.read_region(0, 0, 0, r.width, r.height)


def test_slide_layout_flag_overrides_the_models(exemplar_bundle, tmp_path: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """gigagen slide --layout sampled on a fragment-layout bundle gives the same pixels as the bundle without it, and
    --layout fragments on that one the same as a bundle made with --layout fragments; run.json records the layout
    used. A model without an exemplar refuses --layout fragments with one line, exit 2, nothing written."""
    from conftest import make_bundle
    from gigagen.cli import main

    _, plain = exemplar_bundle
    frag = tmp_path / "frag.safetensors"
    assert run_script(str(plain), "--out", str(frag), "--layout", "fragments").returncode == 0
    runs = {name: _slide(b, tmp_path / name, *extra) for name, b, extra in (
        ("frag", frag, ()), ("frag_sampled", frag, ("--layout", "sampled")),
        ("plain", plain, ()), ("plain_fragments", plain, ("--layout", "fragments")))}
    np.testing.assert_array_equal(runs["frag_sampled"][1], runs["plain"][1])
    np.testing.assert_array_equal(runs["plain_fragments"][1], runs["frag"][1])
    assert (runs["frag"][1] != runs["plain"][1]).any()
    for name, (run, _) in runs.items():
        assert run["config"]["layout"] == ("fragments" if name in ("frag", "plain_fragments") else "sampled")
        assert run["levels"][-1]["made_by"].startswith("fragments") == (run["config"]["layout"] == "fragments")
    capsys.readouterr()
    other = make_bundle(tmp_path / "other.safetensors")
    assert main(["slide", "--checkpoint", str(other), "--size", "256", "--quiet", "--out", str(tmp_path / "x"),
                 "--layout", "fragments"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--layout fragments" in err and "exemplar" in err, err
    assert not (tmp_path / "x").exists()
