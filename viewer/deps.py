"""Shared FastAPI dependencies and the slide lookup used by the routes.

The accessors are `async def` on purpose: they only fetch objects from app.state, and a sync
dependency would cost each request an extra hop through the thread pool. Slide lookup can
touch the disk (rescans), so routes call slide_or_404 from their own thread-pool body.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from viewer.settings import Settings
from viewer.slides import Slide, SlideRegistry
from viewer.tiles import TileService

SLIDE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

SlideId = Annotated[
    str, Path(pattern=SLIDE_ID_PATTERN, max_length=128, description="Slide id from /api/slides")
]


async def get_registry(request: Request) -> SlideRegistry:
    return request.app.state.registry


async def get_tiles(request: Request) -> TileService:
    return request.app.state.tiles


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def slide_or_404(registry: SlideRegistry, slide_id: str) -> Slide:
    try:
        return registry.get(slide_id)
    except KeyError:
        raise HTTPException(404, f"no slide {slide_id!r}") from None


Registry = Annotated[SlideRegistry, Depends(get_registry)]
Tiles = Annotated[TileService, Depends(get_tiles)]
AppSettings = Annotated[Settings, Depends(get_settings)]
