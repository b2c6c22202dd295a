"""`gigagen slide` end to end on a tiny model, and its refusals: one line, exit code 2, nothing touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from gigagen.cli import main


def _slide(tmp: Path, bundle: Path, *extra: str) -> int:
    return main(["slide", "--checkpoint", str(bundle), "--steps", "3", "--quiet", "--formats", "none", *extra])


def test_small_slide_end_to_end(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    rc = _slide(tmp_path, tiny_bundle, "--width", "1300", "--height", "300", "--out", str(out), "--seed", "5", "--json")
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["width"] == 1300 and summary["seed"] == 5 and summary["evaluations_per_latent_pixel_per_step"] == 1.0

    group = zarr.open_group(str(out / "slide.ome.zarr"), mode="r")
    shapes = [group[str(k)].shape for k in range(len(group.attrs["multiscales"][0]["datasets"]))]
    assert shapes == [(3, 300, 1300), (3, 150, 650), (3, 75, 325), (3, 38, 163)]
    level0 = group["0"][:]
    assert level0.dtype == np.uint8 and level0.std() > 1  # decoded content, not the fill value
    assert np.abs(group["1"][:, :10, :10].astype(int) - _box2(level0[:, :20, :20])).max() <= 1  # 2x2 mean

    layout = Image.open(out / "layout.png")
    assert layout.size == (1300 // 16, round(300 / 16))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["seed"] == 5 and run["config"]["steps"] == [3, 3, 3]
    assert run["model"]["name"] == "tiny-test" and run["model"]["identity"].startswith("tiny-test@sha256:")
    assert {"torch", "zarr", "numpy", "gigagen"} <= set(run["versions"])
    assert {"level0_20x", "level2_1.25x", "decode", "pyramid", "total"} <= set(run["timings_s"])
    assert group.attrs["gigagen"]["synthetic"] is True and group.attrs["gigagen"]["status"] == "complete"


def _box2(a: np.ndarray) -> np.ndarray:
    c, h, w = a.shape
    return a.reshape(c, h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(2, 4))


def test_same_seed_same_pixels_across_batch_sizes(tmp_path: Path, tiny_bundle: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _slide(tmp_path, tiny_bundle, "--size", "200", "--out", str(a), "--seed", "9", "--batch-size", "1") == 0
    assert _slide(tmp_path, tiny_bundle, "--size", "200", "--out", str(b), "--seed", "9", "--batch-size", "32", "--tile-order", "shuffle") == 0
    za, zb = (zarr.open_group(str(p / "slide.ome.zarr"), mode="r")["0"][:] for p in (a, b))
    np.testing.assert_array_equal(za, zb)


def test_default_batch_holds_a_fixed_number_of_latent_pixels(tmp_path: Path, tiny_bundle: Path) -> None:
    """Without --batch-size a network call holds CALL_PIXELS latent pixels' worth of tiles (32 of 32^2, 2 of
    128^2): larger tiles do not multiply the network's working memory. run.json records the batch used."""
    from gigagen.config import CALL_PIXELS, default_batch_size

    assert [default_batch_size(t) for t in (32, 64, 128, 256)] == [32, 8, 2, 1] and CALL_PIXELS == 2 * 128 * 128
    for tile, batch in ((8, 512), (16, 128)):
        out = tmp_path / f"t{tile}"
        assert _slide(tmp_path, tiny_bundle, "--size", "256", "--out", str(out), "--seed", "9", "--tile", str(tile)) == 0
        assert json.loads((out / "run.json").read_text())["config"]["batch_size"] == batch
    told = tmp_path / "told"
    assert _slide(tmp_path, tiny_bundle, "--size", "256", "--out", str(told), "--seed", "9", "--tile", "16", "--batch-size", "3") == 0
    assert json.loads((told / "run.json").read_text())["config"]["batch_size"] == 3
    za, zb = (zarr.open_group(str(p / "slide.ome.zarr"), mode="r")["0"][:] for p in (tmp_path / "t16", told))
    np.testing.assert_array_equal(za, zb)


def test_refuses_existing_output_and_keeps_it(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert _slide(tmp_path, tiny_bundle, "--size", "64", "--out", str(out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert _slide(tmp_path, tiny_bundle, "--size", "64", "--out", str(out), "--overwrite") == 2
    assert "not a gigagen slide" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["precious.txt"]


def test_overwrite_replaces_a_slide(tmp_path: Path, tiny_bundle: Path) -> None:
    out = tmp_path / "s"
    assert _slide(tmp_path, tiny_bundle, "--size", "64", "--out", str(out), "--seed", "1") == 0
    assert _slide(tmp_path, tiny_bundle, "--size", "96", "--out", str(out), "--seed", "2", "--overwrite") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 2 and run["width"] == 96
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def _corrupt(tmp: Path) -> Path:
    p = tmp / "corrupt.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + os.urandom(100))
    return p


def _foreign(tmp: Path) -> Path:
    from safetensors.torch import save_file
    import torch

    p = tmp / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    return p


def _mismatched(tmp: Path, tiny_bundle: Path) -> Path:
    """A valid header whose configuration does not match its tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_bundle), framework="pt") as f:
        meta = dict(f.metadata())
    meta["gigagen.bundle"] = meta["gigagen.bundle"].replace('"base_ch": 16', '"base_ch": 32')
    p = tmp / "mismatch.safetensors"
    save_file(load_file(str(tiny_bundle)), str(p), metadata=meta)
    return p


@pytest.mark.parametrize(
    "args,message",
    [
        (["--size", "0"], "width must be a positive integer"),
        (["--width", "-5", "--height", "10"], "width must be a positive integer"),
        (["--size", "64", "--blend", "spiral"], "unknown blend mode"),
        (["--size", "64", "--steps", "0"], "steps must be a positive integer"),
        (["--size", "64", "--formats", "png"], "unknown format"),
        (["--size", "64", "--compression", "webp"], "unknown compression"),
        (["--size", "64", "--device", "tpu"], "unknown device"),
        (["--size", "64", "--tile", "7"], "tile must be a multiple"),
        (["--size", "10000000"], "GB free"),
        (["--width", "64"], "give --size N"),
        (["--size", "64", "--checkpoint", "MISSING"], "checkpoint not found"),
        (["--size", "64", "--checkpoint", "CORRUPT"], "not a readable safetensors file"),
        (["--size", "64", "--checkpoint", "FOREIGN"], "no gigagen bundle configuration"),
        (["--size", "64", "--checkpoint", "MISMATCH"], "does not match its configuration"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    ckpt = {"MISSING": str(tmp_path / "nope.safetensors"), "CORRUPT": str(_corrupt(tmp_path)),
            "FOREIGN": str(_foreign(tmp_path)), "MISMATCH": str(_mismatched(tmp_path, tiny_bundle))}
    args = [ckpt.get(a, a) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(tiny_bundle)]
    out = tmp_path / "never"
    rc = main(["slide", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gigagen.cli", "slide", "--size", "abc", "--out", str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "invalid int value" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
