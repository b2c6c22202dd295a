"""Tiling engine: grid geometry, one denoising sweep, the level cascade, streaming decode.

Takes model functions as callables and never imports a model class.
"""
