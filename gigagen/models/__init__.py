"""Networks: an autoencoder for one pixel tile and a UNet denoiser for one latent tile."""
