"""Shared helpers for the viewer tests (no conftest.py: import what you need from here)."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn

from gigagen.io.export import export_slide
from viewer import Settings, create_app
from viewer.demo import write_demo_slide

# starlette's TestClient warns (at import) that it prefers httpx2; the API under test is the same.
TESTCLIENT_WARNING = "ignore:Using `httpx` with `starlette.testclient` is deprecated"
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
from fastapi.testclient import TestClient  # noqa: E402,F401 - re-exported for the tests


def make_roots(base: Path) -> dict[str, Path]:
    """A served root with a finished slide, a slide being generated and some traps; plus a secret
    file outside the root that must never be served."""
    root = base / "root"
    finished = write_demo_slide(root / "demo-a", 1000, 700, seed=3)
    export_slide(finished, formats=["dzi"], quality=80)  # as `gigagen slide` leaves a slide
    generating = write_demo_slide(root / "batch" / "in-progress", 1200, 600, seed=4,
                                  complete=False, rows_done=1)
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("TOP-SECRET")
    write_demo_slide(outside / "elsewhere", 300, 200, seed=5)
    (root / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    linked = write_demo_slide(root / "linked-files", 300, 200, seed=6)
    (linked / "layout.png").unlink()
    (linked / "layout.png").symlink_to(outside / "elsewhere" / "layout.png")
    (linked / "run.json").unlink()
    (linked / "run.json").symlink_to(secret)
    (root / "not-a-slide").mkdir()
    (root / "not-a-slide" / "notes.txt").write_text("nothing here")
    broken = root / "broken" / "slide.ome.zarr"
    broken.mkdir(parents=True)
    (broken / ".zgroup").write_text('{"zarr_format": 2}')
    (broken / ".zattrs").write_text("{not json")
    return {"root": root, "finished": finished, "generating": generating,
            "outside": outside, "secret": secret}


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels that look stained (pink/purple: red and blue well above green)."""
    rgb = rgb[..., :3].astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(np.mean((r - g > 30) & (b - g > 10)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """The viewer app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("viewer server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
