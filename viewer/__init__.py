"""gigagen's deep-zoom web viewer: `create_app(Settings(roots=...))` gives the FastAPI app."""

from viewer.app import create_app
from viewer.settings import Settings

__all__ = ["Settings", "create_app"]
