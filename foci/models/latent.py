"""Latent formats: how UNet latents relate to VAE latents (§2.5, §2.6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    """Scale (and for Playground v2.5 a per-channel mean/std) between VAE space and UNet space."""

    scale_factor: float = 0.13025
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.channel_mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.channel_std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def to_unet(self, vae_latent: torch.Tensor) -> torch.Tensor:
        """VAE latent → the space the UNet and sampler work in."""
        if self.channel_mean is None:
            return vae_latent * self.scale_factor
        mean, std = self._stats(vae_latent)
        return (vae_latent - mean) * self.scale_factor / std

    def to_vae(self, unet_latent: torch.Tensor) -> torch.Tensor:
        """Sampler output → VAE latent ready for decoding."""
        if self.channel_mean is None:
            return unet_latent / self.scale_factor
        mean, std = self._stats(unet_latent)
        return unet_latent * std / self.scale_factor + mean


SDXL_LATENT = LatentFormat(scale_factor=0.13025)
PLAYGROUND_V25_LATENT = LatentFormat(
    scale_factor=0.5,
    channel_mean=(-1.6574, 1.886, -1.383, 2.5155),
    channel_std=(8.4927, 5.9022, 6.5498, 5.2299),
)
