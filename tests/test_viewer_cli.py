"""`gigagen serve`: argument errors are one line with exit code 2; a real server answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _viewer_helpers import free_port

from gigagen.cli import main
from viewer import Settings
from viewer.demo import write_demo_slide
from viewer.settings import openseadragon_installed


def require_openseadragon() -> None:
    """serve refuses to start without it; it is part of the set-up, so missing it is a failure."""
    assert openseadragon_installed(Settings(roots=())), "OpenSeadragon missing: npm ci --prefix viewer"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "does not exist" in one_line_error(capsys)


def test_file_path_is_a_user_error(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["serve", str(tmp_path / "x.txt")]) == 2
    assert "not a directory" in one_line_error(capsys)


@pytest.mark.parametrize("port", ["0", "70000"])
def test_bad_port_is_a_user_error(tmp_path, capsys, port):
    assert main(["serve", str(tmp_path), "--port", port]) == 2
    assert "--port" in one_line_error(capsys)


def test_busy_port_is_a_user_error(tmp_path, capsys):
    require_openseadragon()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(capsys)


def test_serve_runs_a_viewer_on_loopback(tmp_path):
    require_openseadragon()
    write_demo_slide(tmp_path / "cli-slide", 600, 400)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gigagen.cli", "serve", str(tmp_path), "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline, slides = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/slides", timeout=2) as r:
                    slides = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        assert slides is not None, "server did not answer"
        assert [s["id"] for s in slides] == ["cli-slide"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slides/cli-slide", timeout=5) as r:
            assert "openseadragon.min.js" in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert f"1 slide(s) at http://127.0.0.1:{port}/" in err
