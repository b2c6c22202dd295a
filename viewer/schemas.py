"""Response models of the JSON API (they make the OpenAPI schema exact)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Body of every 4xx answer of the API."""

    detail: str


class SlideSummary(BaseModel):
    id: str = Field(description="Stable id used in every URL of the slide")
    name: str = Field(description="Name of the slide directory")
    width: int = Field(description="Level-0 width in pixels")
    height: int = Field(description="Level-0 height in pixels")
    mpp: float = Field(description="Level-0 pixel size in micrometres")
    status: str = Field(description='"complete", or "generating" while pixels are still written')
    seed: Any = None
    model: Any = None
    created: str | None = None
    levels: int = Field(description="Number of stored pyramid levels")
    rev: str = Field(description="Revision of the slide's metadata; part of cacheable URLs")
    viewer_url: str
    dzi_url: str
    thumbnail_url: str
    layout_url: str | None = None
    run_url: str | None = None


class SlideDetail(SlideSummary):
    tile_size: int
    overlap: int
    tile_format: str
    dz_levels: int = Field(description="Number of Deep Zoom levels (level 0 is 1x1)")
    level_shapes: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        description="(height, width) of each stored level"
    )
    attrs: dict[str, Any] = Field(description="The OME-Zarr group attributes")
    run: Any = Field(None, description="Parsed run.json (the run configuration), if present")
    run_error: str | None = None
