"""The viewer's FastAPI app: `create_app(settings)` wires registry, tile service, routes, files."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gigagen import __version__
from viewer.routers import api, pages
from viewer.settings import Settings, openseadragon_installed
from viewer.slides import SlideRegistry
from viewer.tiles import TileService, prime_codecs

log = logging.getLogger("gigagen.viewer")

# Everything the page needs comes from this server: the policy makes the browser refuse any
# other host (OpenSeadragon converts images in a blob: worker, hence worker-src blob:).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def _host_name(scope: Scope) -> str:
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityHeaders:
    """Adds the headers above; refuses Host names not allowed (pure ASGI: BaseHTTPMiddleware
    would cost every tile request an extra task)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts is not None and _host_name(scope).lower() not in self.allowed_hosts:
            response = PlainTextResponse("Invalid host header", status_code=400)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings) -> FastAPI:
    """The viewer app over settings.roots. Slides are scanned at start-up and on demand."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.registry.rescan(force=True)  # open every store once, before the first request
        prime_codecs()
        log.info("serving %d slide(s)", len(app.state.registry.slides()))
        yield
        app.state.tiles.clear()

    app = FastAPI(
        title="gigagen viewer",
        version=__version__,
        description="Deep-zoom viewer for gigagen's synthetic whole-slide images (OME-Zarr).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = SlideRegistry(
        settings.roots, settings.tile_size, settings.overlap,
        settings.rescan_interval_s, settings.refresh_interval_s,
    )
    app.state.tiles = TileService(settings.jpeg_quality, settings.tile_cache_bytes,
                                  settings.chunk_cache_bytes)
    app.state.pages = pages.Pages(settings)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    if openseadragon_installed(settings):
        app.mount("/vendor/openseadragon", StaticFiles(directory=settings.openseadragon_dir),
                  name="openseadragon")
    else:
        log.warning("OpenSeadragon missing at %s: run `npm ci --prefix viewer`", settings.openseadragon_dir)

        @app.get("/vendor/openseadragon/{path:path}", include_in_schema=False)
        async def no_openseadragon(path: str) -> PlainTextResponse:
            return PlainTextResponse("OpenSeadragon is not installed: run `npm ci --prefix viewer`",
                                     status_code=404)

    app.add_middleware(SecurityHeaders, allowed_hosts=settings.allowed_hosts)
    return app
