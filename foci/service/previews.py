"""Live previews of a running sampler: the predicted clean latent turned into a small RGB picture.

Without a VAE-approximation model the latent is mapped to RGB by a fixed linear map, the widely published SDXL
latent-to-RGB factors (a 4×3 matrix plus a bias, fitted on the UNet-space latent, i.e. VAE latent × 0.13025).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

# Rows: latent channels 0…3; columns: R, G, B. Output is in −1…1.
SDXL_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS: tuple[float, float, float] = (0.1084, -0.0175, -0.0011)
_PIXELS_PER_LATENT = 8


def latent_preview(denoised: torch.Tensor, *, max_size: int = 256) -> Image.Image:
    """An RGB preview of a UNet-space SDXL latent ``[1, 4, h, w]`` or ``[4, h, w]`` (any device and dtype).

    The picture is scaled up toward the image's own size (8 pixels per latent cell) but its longer side never
    exceeds ``max_size``.
    """
    if not isinstance(denoised, torch.Tensor):
        raise TypeError(f"latent_preview needs a torch tensor, got {type(denoised).__name__}")
    latent = denoised.detach()
    if latent.ndim == 4:
        latent = latent[0]
    if latent.ndim != 3 or latent.shape[0] != len(SDXL_LATENT_RGB_FACTORS):
        raise ValueError(f"latent_preview needs a [1, 4, h, w] or [4, h, w] SDXL latent, got {tuple(denoised.shape)}")
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    latent = latent.float()
    factors = torch.tensor(SDXL_LATENT_RGB_FACTORS, dtype=torch.float32, device=latent.device)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32, device=latent.device)
    rgb = torch.einsum("chw,cr->hwr", latent, factors) + bias
    rgb = torch.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    height, width = pixels.shape[:2]
    longest = max(height, width)
    target = min(max_size, longest * _PIXELS_PER_LATENT)
    if target != longest:
        scale = target / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.Resampling.BILINEAR if target > longest else Image.Resampling.BOX
        picture = picture.resize(size, resample)
    return picture


def png_base64(picture: Image.Image) -> str:
    """The picture as a base64-encoded PNG (what :attr:`JobEvent.preview_png` carries)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
