"""The two HTML pages: the slide list at / and the viewer at /slides/{id} (deep-linkable)."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from viewer.deps import Registry, slide_or_404
from viewer.settings import Settings

router = APIRouter(include_in_schema=False)

_NO_CACHE = {"Cache-Control": "no-cache"}


class Pages:
    """The static HTML pages, read once when the app is built (no templating: ids come from the URL)."""

    def __init__(self, settings: Settings) -> None:
        self.index = (settings.static_dir / "index.html").read_bytes()
        self.slide = (settings.static_dir / "slide.html").read_bytes()


async def _get_pages(request: Request) -> Pages:
    return request.app.state.pages


PagesDep = Annotated[Pages, Depends(_get_pages)]


def not_found_page(message: str) -> HTMLResponse:
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found</title>'
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/viewer.css"></head>'
        f'<body class="page"><main class="notice"><h1>Not found</h1><p>{html.escape(message)}</p>'
        '<p><a href="/">All slides</a></p></main></body></html>'
    )
    return HTMLResponse(body, status_code=404, headers=_NO_CACHE)


@router.get("/", response_class=HTMLResponse)
async def index_page(pages: PagesDep) -> HTMLResponse:
    return HTMLResponse(pages.index, headers=_NO_CACHE)


@router.get("/slides/{slide_id}", response_class=HTMLResponse)
def slide_page(slide_id: str, registry: Registry, pages: PagesDep) -> HTMLResponse:
    try:
        slide_or_404(registry, slide_id)
    except HTTPException:
        return not_found_page(f"There is no slide {slide_id!r} under the served folders.")
    return HTMLResponse(pages.slide, headers=_NO_CACHE)
