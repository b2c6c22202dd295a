"""HTTP routes: `api` (JSON, DZI, tiles, slide files) and `pages` (the HTML pages)."""
