"""A real dask scheduler and two workers on loopback generate the same pixels as one process,
also when a worker is killed midway."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

BIN = Path(sys.executable).parent
ARGS = ["--size", "640", "--steps", "5", "--seed", "8", "--quiet", "--formats", "none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slide(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gigagen.cli", "slide", "--checkpoint", str(bundle), "--out", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _level0(out: Path) -> np.ndarray:
    return zarr.open_group(str(out / "slide.ome.zarr"), mode="r")["0"][:]


@pytest.fixture()
def cluster(tmp_path: Path):
    if shutil.which("dask", path=str(BIN)) is None:
        pytest.skip("the dask command is not installed in this environment")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    workers = []
    for i in range(2):
        w = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                              "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers.append(w)
    procs += workers
    _wait_for_workers(address, 2)
    yield address, workers
    for p in procs:
        p.kill()
        p.wait()


def _wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    from distributed import Client

    t0 = time.monotonic()
    while True:
        try:
            with Client(address, timeout="5s") as c:
                c.wait_for_workers(n, timeout=timeout)
                return
        except (OSError, TimeoutError):
            if time.monotonic() - t0 > timeout:
                raise


def test_two_workers_match_one_process_even_when_one_dies(tiny_bundle: Path, tmp_path: Path, cluster) -> None:
    address, workers = cluster
    local = tmp_path / "local"
    assert _slide(tiny_bundle, local).returncode == 0
    reference = _level0(local)

    farmed = tmp_path / "farmed"
    proc = _slide(tiny_bundle, farmed, "--scheduler", address, "--json")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_level0(farmed), reference)
    run = json.loads((farmed / "run.json").read_text())
    assert run["latent_store"] == "disk" and run["network_evaluations"]["per_latent_pixel_per_step"] == 1.0

    # lose a worker midway: dask reruns its tasks on the survivor; tile writes are idempotent
    lossy = tmp_path / "lossy"
    cmd = [sys.executable, "-m", "gigagen.cli", "slide", "--checkpoint", str(tiny_bundle), "--out", str(lossy), *ARGS, "--scheduler", address]
    run_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = lossy / ".gigagen-state" / "L0" / "state.json"
    t0 = time.monotonic()
    while not marker.exists() and run_proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    workers[0].kill()
    _, err = run_proc.communicate(timeout=600)
    assert run_proc.returncode == 0, err
    np.testing.assert_array_equal(_level0(lossy), reference)


def test_unreachable_scheduler_is_a_clear_error(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = _slide(tiny_bundle, tmp_path / "x", "--scheduler", f"tcp://127.0.0.1:{_free_port()}")
    assert proc.returncode == 2 and "cannot reach the dask scheduler" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_workers_apply_autoguidance_like_one_process(guided_bundle: Path, tmp_path: Path, cluster) -> None:
    address, _ = cluster
    local, farmed = tmp_path / "local", tmp_path / "farmed"
    assert _slide(guided_bundle, local, "--autoguidance", "2.5").returncode == 0
    proc = _slide(guided_bundle, farmed, "--autoguidance", "2.5", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_level0(farmed), _level0(local))
    a, b = (json.loads((p / "run.json").read_text())["network_evaluations"] for p in (local, farmed))
    assert a["guide_tiles"] == b["guide_tiles"] > 0  # the workers' guide evaluations reach the record
    unguided = tmp_path / "unguided"
    assert _slide(guided_bundle, unguided, "--autoguidance", "1").returncode == 0
    assert not np.array_equal(_level0(unguided), _level0(local))


def test_workers_noise_parents_like_one_process(tmp_path: Path, cluster) -> None:
    """Conditioning augmentation on a farm: the workers read the same parent noise (LevelSpec.cond_noise)
    and tell their networks the same timestep (RunnerSpec.cond_aug) as one process."""
    from test_cond_aug import cond_aug_bundle

    address, _ = cluster
    bundle = cond_aug_bundle(tmp_path / "ca.safetensors", cond_aug=300)
    local, farmed, other = tmp_path / "local", tmp_path / "farmed", tmp_path / "other"
    assert _slide(bundle, local, "--cond-aug", "200").returncode == 0
    proc = _slide(bundle, farmed, "--cond-aug", "200", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_level0(farmed), _level0(local))
    assert _slide(bundle, other, "--scheduler", address).returncode == 0  # the bundle's 300
    assert not np.array_equal(_level0(other), _level0(local))


def test_a_decoded_level_on_a_farm_matches_one_process(tmp_path: Path, cluster) -> None:
    """The client reads the decoded level off its parent in the farm's latent store; the workers then refine
    from it as one process does, and the level decoder's passes reach the record."""
    from conftest import make_bundle
    from test_decoded_level import DECODED

    address, _ = cluster
    bundle = make_bundle(tmp_path / "d.safetensors", decoded_level=1, **DECODED)
    local, farmed = tmp_path / "local", tmp_path / "farmed"
    assert _slide(bundle, local).returncode == 0
    proc = _slide(bundle, farmed, "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_level0(farmed), _level0(local))
    a, b = (json.loads((p / "run.json").read_text())["network_evaluations"] for p in (local, farmed))
    assert a["unet_latent_pixels"] == b["unet_latent_pixels"] and a["decode_calls"] == b["decode_calls"] > 0
