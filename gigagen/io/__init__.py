"""Slide storage and export (no torch).

omezarr: the OME-Zarr slide store (create_slide / SlideWriter / open_slide / SlideReader);
chunks: fast zlib chunk reads for gigagen's own store layout; tiles: streaming tile iterators;
tiff: OME-TIFF (Bio-Formats, QuPath) and generic pyramidal TIFF (OpenSlide) writers;
export: export_slide (atomic files) and slide_info (`gigagen info`).
"""
