"""Schemathesis fuzzing of the viewer's OpenAPI schema: no 5xx, answers match the schema.

Bounded for speed: a few dozen examples per operation. Half of the generated slide ids and
tile addresses are mapped onto a real slide so the fuzzing reaches the tile code, not only 404s.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from _viewer_helpers import TESTCLIENT_WARNING
from hypothesis import HealthCheck, settings

from viewer import Settings, create_app
from viewer.demo import write_demo_slide
from viewer.deps import SLIDE_ID_PATTERN
from viewer.routers.api import TILE_NAME

pytestmark = pytest.mark.filterwarnings(TESTCLIENT_WARNING)

REAL_ID = "fuzzed"
ID_RE = re.compile(SLIDE_ID_PATTERN)
MAX_EXAMPLES = 30


def _build_schema():
    # Built at import (schemathesis.pytest.from_fixture does not work with pytest 9), in a
    # temporary folder removed when the interpreter exits.
    root = Path(tempfile.mkdtemp(prefix="gigagen-viewer-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    write_demo_slide(root / REAL_ID, 700, 500, seed=2)
    write_demo_slide(root / "growing", 600, 400, seed=3, complete=False, rows_done=1)
    app = create_app(Settings(roots=(root,)))
    app.state.registry.rescan(force=True)
    geometry = app.state.registry.get(REAL_ID).geometry
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)

    @loaded.hook
    def map_path_parameters(context, path_parameters):
        # Only valid values are remapped (to other valid values): negative cases stay negative.
        if not path_parameters:
            return path_parameters
        params = dict(path_parameters)
        slide_id = params.get("slide_id")
        if isinstance(slide_id, str) and ID_RE.match(slide_id) and len(slide_id) % 3 != 0:
            params["slide_id"] = REAL_ID
        level, tile = params.get("level"), params.get("tile")
        if (isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 64
                and isinstance(tile, str) and TILE_NAME.match(tile) and len(tile) % 4 != 0):
            level = level % geometry.level_count
            cols, rows = geometry.dz_tiles[level]
            fmt = "png" if level % 2 else "jpeg"
            params["level"] = level
            params["tile"] = f"{(level * 7) % cols}_{len(tile) % rows}.{fmt}"
        return params

    return loaded


schema = _build_schema()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case):
    response = case.call_and_validate()
    assert response.status_code < 500
