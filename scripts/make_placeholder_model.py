"""Write the untrained placeholder bundle (random weights) used until a trained default exists.

    .venv/bin/python scripts/make_placeholder_model.py gigagen/weights/default.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gigagen.models.checkpoint import BundleConfig, save_bundle
from gigagen.models.unet import UNet, UNetConfig
from gigagen.models.vae import Autoencoder, AutoencoderConfig


def placeholder_config(name: str = "gigagen-placeholder-random") -> BundleConfig:
    return BundleConfig(name=name, ae=AutoencoderConfig(), unet=UNetConfig(), trained=False,
                        training={"note": "randomly initialised placeholder; not trained"})


def main(path: str) -> None:
    torch.manual_seed(0)
    cfg = placeholder_config()
    unet = UNet(cfg.unet)
    torch.nn.init.normal_(unet.out.weight, std=0.02)  # zero-init output would make every sample the prior mean
    save_bundle(Path(path), cfg, Autoencoder(cfg.ae), unet)


if __name__ == "__main__":
    main(sys.argv[1])
