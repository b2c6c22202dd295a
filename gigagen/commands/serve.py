"""`gigagen serve PATH...`: browse the slides under PATH in a deep-zoom web viewer."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from gigagen.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="browse slides in a deep-zoom web viewer",
        description="Serve every slide found under PATH (slide directories, or folders holding "
        "them) at http://HOST:PORT/. Slides still being generated are shown as far as they exist.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path,
                   help="slide directory, slide.ome.zarr, or a folder searched for slides")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--cache-mb", type=float, default=256.0,
                   help="memory for cached tiles of finished slides, in MB (0 = no cache; default 256)")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default warning; info adds one line per request)")


def _check_args(args: argparse.Namespace) -> list[Path]:
    roots = []
    for path in args.paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if not path.is_dir():
            raise UserError(f"{path} is not a directory (give a slide directory or a folder of slides)")
        roots.append(path.resolve())
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.cache_mb < 0:
        raise UserError(f"--cache-mb must be >= 0, got {args.cache_mb}")
    return roots


def _check_port_free(host: str, port: int) -> None:
    """Fail with one clear line now rather than a uvicorn traceback after start-up."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    roots = _check_args(args)
    import uvicorn

    from viewer import Settings, create_app
    from viewer.settings import openseadragon_installed

    # On loopback, answer only requests addressed to this machine's names (DNS rebinding).
    allowed = LOOPBACK if args.host in LOOPBACK else None
    settings = Settings(roots=tuple(roots), cache_mb=args.cache_mb, allowed_hosts=allowed)
    if not openseadragon_installed(settings):
        raise UserError(
            f"OpenSeadragon is not installed in {settings.openseadragon_dir}; "
            "run `npm ci --prefix viewer` (scripts/setup.sh does it)"
        )
    _check_port_free(args.host, args.port)
    app = create_app(settings)
    count = len(app.state.registry.slides())
    if args.host not in LOOPBACK:
        print(f"gigagen serve: warning: listening on {args.host}; other machines can see these slides",
              file=sys.stderr)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gigagen serve: {count} slide(s) at http://{shown_host}:{args.port}/ (Ctrl+C stops)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("info", "debug"))
    return 0
