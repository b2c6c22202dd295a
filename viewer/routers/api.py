"""JSON API, DZI descriptors, tiles and per-slide files under /api.

Every route is a plain `def`: FastAPI runs it in its thread pool, so zarr reads and image
encoding never block the event loop. Any bad address (unknown slide, level, column or row,
malformed tile name) is a 404 or 422; ids are looked up in the registry, never joined to paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from viewer.deps import AppSettings, Registry, SlideId, Tiles, slide_or_404
from viewer.schemas import Problem, SlideDetail, SlideSummary
from viewer.slides import LAYOUT_NAME, RUN_NAME, Slide
from viewer.tiles import MEDIA_TYPES, content_etag

router = APIRouter(prefix="/api", tags=["slides"])

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
TILE_NAME = re.compile(r"^([0-9]{1,9})_([0-9]{1,9})\.(jpeg|jpg|png)$")

Rev = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_-]{1,64}$",
          description="Slide revision (from the slide's URLs); makes finished tiles cacheable forever"),
]
IfNoneMatch = Annotated[str | None, Header(max_length=1024, description="ETag(s) held by the client")]
Level = Annotated[int, Path(ge=0, le=64, description="Deep Zoom level; 0 is 1x1")]
TileName = Annotated[str, Path(pattern=TILE_NAME.pattern, max_length=32, description="COL_ROW.FORMAT")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such slide or tile"}}


def _image(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {200: {"content": {media_type: binary}, "description": description}, **NOT_FOUND}


def _cacheable(media_types: tuple[str, ...], description: str) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {"content": {m: binary for m in media_types}, "description": description},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **NOT_FOUND,
    }


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _cache_control(slide: Slide, rev: str | None) -> str:
    # Immutable only when the URL names the current revision of a finished slide, so a
    # regenerated slide (new revision) is never hidden behind a browser's cached tiles.
    return IMMUTABLE if slide.complete and rev == slide.rev else REVALIDATE


def _conditional(body: bytes, media_type: str, etag: str, cache: str, if_none_match: str | None) -> Response:
    headers = {"ETag": etag, "Cache-Control": cache}
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _summary_fields(slide: Slide) -> dict[str, Any]:
    base = f"/api/slides/{slide.id}"
    meta = slide.meta
    return {
        "id": slide.id, "name": slide.name, "width": slide.geometry.width,
        "height": slide.geometry.height, "mpp": slide.reader.mpp, "status": slide.status,
        "seed": meta.get("seed"), "model": meta.get("model"), "created": slide.created(),
        "levels": len(slide.reader.level_shapes), "rev": slide.rev,
        "viewer_url": f"/slides/{slide.id}", "dzi_url": f"{base}/slide.dzi?rev={slide.rev}",
        "thumbnail_url": f"{base}/thumbnail.jpeg?rev={slide.rev}",
        "layout_url": f"{base}/layout.png" if slide.side_file(LAYOUT_NAME) else None,
        "run_url": f"{base}/run.json" if slide.side_file(RUN_NAME) else None,
    }


@router.get("/slides", response_model=list[SlideSummary], summary="All slides under the served roots")
def list_slides(registry: Registry) -> list[SlideSummary]:
    slides = sorted(registry.slides(), key=lambda s: (s.name.lower(), s.id))
    return [SlideSummary(**_summary_fields(s)) for s in slides]


@router.get("/slides/{slide_id}", response_model=SlideDetail, responses=NOT_FOUND,
            summary="One slide: geometry, metadata and run configuration")
def slide_detail(slide_id: SlideId, registry: Registry, settings: AppSettings) -> SlideDetail:
    slide = slide_or_404(registry, slide_id)
    run, run_error = slide.run_config()
    g = slide.geometry
    return SlideDetail(
        **_summary_fields(slide), tile_size=g.tile_size, overlap=g.overlap,
        tile_format=settings.tile_format, dz_levels=g.level_count,
        level_shapes=slide.reader.level_shapes, attrs=slide.reader.attrs,
        run=run, run_error=run_error,
    )


@router.get("/slides/{slide_id}/slide.dzi", response_class=Response,
            responses=_cacheable(("application/xml",), "DZI descriptor"),
            summary="Deep Zoom descriptor; tiles are at slide_files/LEVEL/COL_ROW.FORMAT")
def dzi(slide_id: SlideId, registry: Registry, settings: AppSettings, rev: Rev = None,
        if_none_match: IfNoneMatch = None) -> Response:
    slide = slide_or_404(registry, slide_id)
    xml = slide.geometry.dzi_xml(settings.tile_format).encode()
    etag = content_etag(xml + slide.rev.encode())
    return _conditional(xml, "application/xml", etag, _cache_control(slide, rev), if_none_match)


@router.get("/slides/{slide_id}/slide_files/{level}/{tile}", response_class=Response,
            responses=_cacheable(("image/jpeg", "image/png"), "Tile image"),
            summary="One Deep Zoom tile (edge tiles are smaller than TileSize)")
def tile(slide_id: SlideId, level: Level, tile: TileName, request: Request,
         rev: Rev = None, if_none_match: IfNoneMatch = None) -> Response:
    # app.state directly rather than Depends: FastAPI's dependency solving is ~40% of the
    # cost of a cached tile, and this route carries nearly all of the traffic.
    registry, tiles = request.app.state.registry, request.app.state.tiles
    match = TILE_NAME.match(tile)
    if match is None:  # the Path pattern already rejects these; kept for direct calls
        raise HTTPException(422, "tile must be COL_ROW.jpeg|jpg|png")
    col, row = int(match[1]), int(match[2])
    fmt = "jpeg" if match[3] == "jpg" else match[3]
    slide = slide_or_404(registry, slide_id)
    try:
        slide.geometry.check_tile(level, col, row)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    cache = _cache_control(slide, rev)
    etag = tiles.tile_etag(slide, level, col, row, fmt)
    if etag is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    data = tiles.tile(slide, level, col, row, fmt)
    return _conditional(data, MEDIA_TYPES[fmt], etag or content_etag(data), cache, if_none_match)


@router.get("/slides/{slide_id}/thumbnail.jpeg", response_class=Response,
            responses=_cacheable(("image/jpeg",), "Whole-slide thumbnail, longer side <= 256 px"),
            summary="Thumbnail of the whole slide")
def thumbnail(slide_id: SlideId, registry: Registry, tiles: Tiles, rev: Rev = None,
              if_none_match: IfNoneMatch = None) -> Response:
    slide = slide_or_404(registry, slide_id)
    if slide.complete:
        data = tiles.tiles.get_or_compute((slide.id, slide.rev, "thumbnail"), lambda: tiles.thumbnail(slide))
    else:
        data = tiles.thumbnail(slide)
    return _conditional(data, "image/jpeg", content_etag(data), _cache_control(slide, rev), if_none_match)


@router.get("/slides/{slide_id}/layout.png", response_class=FileResponse,
            responses=_image("image/png", "The decoded coarse layout level"),
            summary="The slide's layout.png")
def layout(slide_id: SlideId, registry: Registry) -> FileResponse:
    path = slide_or_404(registry, slide_id).side_file(LAYOUT_NAME)
    if path is None:
        raise HTTPException(404, "this slide has no layout.png")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": REVALIDATE})


@router.get("/slides/{slide_id}/run.json", response_class=JSONResponse,
            responses={200: {"content": {"application/json": {"schema": {}}},
                             "description": "The run configuration"}, **NOT_FOUND},
            summary="The slide's run.json (run configuration, seed, versions, timings)")
def run_json(slide_id: SlideId, registry: Registry) -> JSONResponse:
    run, error = slide_or_404(registry, slide_id).run_config()
    if run is None:
        raise HTTPException(404, error or "this slide has no run.json")
    return JSONResponse(run, headers={"Cache-Control": REVALIDATE})

