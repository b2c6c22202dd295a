"""Runs killed with SIGKILL at several points resume to the same pixels; mismatched state is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr

ARGS = ["--size", "640", "--steps", "6", "--seed", "4", "--quiet", "--formats", "ome-tiff", "--compression", "deflate"]


def _cmd(bundle: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gigagen.cli", "slide", "--checkpoint", str(bundle), "--out", str(out), *ARGS, *extra]


def _completed(out: Path, level: int) -> int:
    try:
        return json.loads((out / ".gigagen-state" / f"L{level}" / "state.json").read_text())["completed"]
    except (OSError, ValueError):
        return -1


def _stages(out: Path) -> list[str]:
    try:
        return json.loads((out / ".gigagen-state" / "progress.json").read_text())["stages"]
    except (OSError, ValueError):
        return []


def _kill_when(cmd: list[str], condition: Callable[[], bool], timeout: float = 120) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read().decode()[-500:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("kill point never reached")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _pixels(out: Path) -> list[np.ndarray]:
    g = zarr.open_group(str(out / "slide.ome.zarr"), mode="r")
    return [g[k][:] for k in sorted(g.array_keys())]


def _assert_same_tiff(a: Path, b: Path) -> None:
    import tifffile

    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        levels_a, levels_b = ta.series[0].levels, tb.series[0].levels
        assert len(levels_a) == len(levels_b) > 1
        for la, lb in zip(levels_a, levels_b):
            np.testing.assert_array_equal(la.asarray(), lb.asarray())


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    out = tmp_path_factory.mktemp("ref") / "slide"
    subprocess.run(_cmd(tiny_bundle, out), check=True)
    return out, _pixels(out)


@pytest.mark.parametrize("budget", ["2GiB", "0"])  # latents in memory (checkpointed) and in per-tile files
def test_sigkill_at_four_points_then_resume_gives_identical_pixels(tiny_bundle: Path, tmp_path: Path, reference, budget: str) -> None:
    out = tmp_path / "slide"
    cmd = _cmd(tiny_bundle, out, "--memory-budget", budget)
    kill_points = [
        lambda: _completed(out, 2) >= 1,  # during the layout level
        lambda: _completed(out, 1) >= 2,  # mid refinement 5x
        lambda: _completed(out, 0) >= 3,  # mid refinement 20x
        lambda: "decode" in _stages(out),  # during pyramid / export
    ]
    _kill_when(cmd, kill_points[0])
    for point in kill_points[1:]:
        _kill_when(cmd + ["--resume"], point)
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for got, want in zip(_pixels(out), reference[1], strict=True):
        np.testing.assert_array_equal(got, want)
    assert not (out / ".gigagen-state").exists()
    _assert_same_tiff(out / "slide.ome.tif", reference[0] / "slide.ome.tif")
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_resume_refuses_other_arguments_and_corrupt_state(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "slide"
    cmd = _cmd(tiny_bundle, out)
    _kill_when(cmd, lambda: _completed(out, 1) >= 1)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    other = [a if a != "6" else "7" for a in cmd] + ["--resume"]  # --steps 7
    proc = subprocess.run(other, capture_output=True, text=True)
    assert proc.returncode == 2 and "different steps" in proc.stderr and "Traceback" not in proc.stderr

    plain = subprocess.run(cmd, capture_output=True, text=True)  # without --resume: refused, with a hint
    assert plain.returncode == 2 and "--resume" in plain.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched

    (out / ".gigagen-state" / "progress.json").write_text("{not json")
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr

    missing = subprocess.run(_cmd(tiny_bundle, tmp_path / "never") + ["--resume"], capture_output=True, text=True)
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "slide"
    # a parent that ignores SIGINT (e.g. a background CI shell) would pass that on; restore the default
    proc = subprocess.Popen(_cmd(tiny_bundle, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while _completed(out, 1) < 1 and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    done = subprocess.run(_cmd(tiny_bundle, out) + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
