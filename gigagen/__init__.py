"""gigagen: synthetic gigapixel H&E whole-slide images by coarse-to-fine grid-shift latent diffusion."""

__version__ = "0.1.0"
