"""Reconstruction losses for the autoencoder (no downloaded perceptual networks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gauss_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, eq. 13) of (B, C, H, W) images; gaussian window, valid region."""
    c = a.shape[1]
    w = _gauss_window(size, sigma, c, a.device)
    a, b = a.float(), b.float()
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    saa = F.conv2d(a * a, w, groups=c) - mu_a**2
    sbb = F.conv2d(b * b, w, groups=c) - mu_b**2
    sab = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


def fft_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between log amplitude spectra: penalises lost high frequencies (blur) that L1 alone tolerates."""
    fa = torch.fft.rfft2(a.float(), norm="ortho").abs()
    fb = torch.fft.rfft2(b.float(), norm="ortho").abs()
    return (torch.log1p(fa) - torch.log1p(fb)).abs().mean()


def ae_loss(x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor, w_ssim: float = 0.5, w_fft: float = 0.2, w_lat: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + w_ssim (1 - SSIM) + w_fft FFT + w_lat |z|^2 (keeps the deterministic latent's scale bounded)."""
    l1 = (x - recon.float()).abs().mean()
    s = ssim(x, recon)
    ff = fft_loss(x, recon)
    lat = z.float().pow(2).mean()
    loss = l1 + w_ssim * (1 - s) + w_fft * ff + w_lat * lat
    return loss, {"l1": l1.item(), "ssim": s.item(), "fft": ff.item(), "lat": lat.item()}


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float(10 * torch.log10(torch.tensor(data_range**2 / max(mse, 1e-12))))
