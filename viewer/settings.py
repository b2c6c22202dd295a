"""Viewer settings: one frozen dataclass, built by `gigagen serve` or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gigagen.io.deepzoom import TILE_FORMATS

VIEWER_DIR = Path(__file__).resolve().parent
STATIC_DIR = VIEWER_DIR / "static"
# Installed by `npm ci --prefix viewer` (scripts/setup.sh) from viewer/package-lock.json.
OPENSEADRAGON_DIR = VIEWER_DIR / "node_modules" / "openseadragon" / "build" / "openseadragon"


@dataclass(frozen=True)
class Settings:
    """roots: slide directories, or directories searched for them; nothing else is served.

    tile_size/overlap: the DZI TileSize/Overlap (256/0 keeps tiles inside one 512 chunk).
    cache_mb: memory for encoded tiles plus decoded chunks of finished slides (0 = no caching).
    allowed_hosts: Host header names accepted (None = any); a loopback server sets its own
    names so a web page elsewhere cannot reach it through DNS rebinding.
    """

    roots: tuple[Path, ...]
    tile_size: int = 256
    overlap: int = 0
    tile_format: str = "jpeg"
    jpeg_quality: int = 80
    cache_mb: float = 256.0
    rescan_interval_s: float = 2.0
    refresh_interval_s: float = 1.0
    static_dir: Path = STATIC_DIR
    openseadragon_dir: Path = field(default=OPENSEADRAGON_DIR)
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(Path(r) for r in self.roots))
        if self.tile_format not in TILE_FORMATS:
            raise ValueError(f"tile_format must be one of {TILE_FORMATS}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if self.cache_mb < 0:
            raise ValueError("cache_mb must be >= 0")

    @property
    def tile_cache_bytes(self) -> int:
        return int(self.cache_mb * 0.5 * (1 << 20))

    @property
    def chunk_cache_bytes(self) -> int:
        return int(self.cache_mb * 0.5 * (1 << 20))


def openseadragon_installed(settings: Settings) -> bool:
    return (settings.openseadragon_dir / "openseadragon.min.js").is_file()
