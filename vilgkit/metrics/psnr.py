"""Peak signal-to-noise ratio of reconstructed images (tokenizer and reconstructor quality)."""

from __future__ import annotations

import torch


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2), per image then averaged."""
    mse = (images.float() - reconstructions.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()
