"""From pixel mask to latent mask, and from the decoded crop back into the picture (§2.12 steps 6 and 10).

Tensors follow diffusers' layout: pixels ``(B, 3, H, W)`` in 0…1, masks ``(B, H, W)`` in 0…1. Images and masks
for the paste-back are uint8 numpy arrays as elsewhere in :mod:`foci.imaging`.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from foci.imaging.crop import CropBox
from foci.imaging.masks import resample

FEATHER_ITERATIONS = 32
FEATHER_STEP = 8


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """A uint8 ``(H, W)`` mask as a float32 ``(1, H, W)`` tensor in 0…1."""
    return torch.from_numpy(mask.astype(np.float32) / 255.0)[None]


def grey_out_masked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pixels the inpaint latent is encoded from: masked pixels (mask rounded to 1) set to 0.5 grey."""
    weight = mask.round()[:, None]
    return pixels * (1 - weight) + 0.5 * weight


def latent_mask(mask: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """``(B, 1, h, w)`` 0/1 mask of the latent cells with any masked pixel: the pixel mask is resized bilinearly to
    8× the latent size, rounded, 8×8 max-pooled and rounded again."""
    full = F.interpolate(mask[:, None].float(), size=(latent_height * 8, latent_width * 8), mode="bilinear").round()
    return F.max_pool2d(full, (8, 8)).round()


def soft_mask(mask: np.ndarray) -> np.ndarray:
    """Fooocus's ``morphological_open``: 256 inside the mask (> 127), then 32 rounds of
    ``x = max(x, max3×3(x) − 8)``, clipped to 0…255. The result falls by 8 per pixel of Chebyshev distance from
    the mask, so it is 0 from 32 pixels away on."""
    values = np.where(mask > 127, 256, 0).astype(np.int16)
    kernel = np.ones((3, 3), dtype=np.uint8)
    for _ in range(FEATHER_ITERATIONS):
        values = np.maximum(values, cv2.dilate(values, kernel) - FEATHER_STEP)
    return values.clip(0, 255).astype(np.uint8)


def alpha_blend(foreground: np.ndarray, background: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``fg·w + bg·(1 − w)`` with ``w = weight / 255`` in float32, clipped and truncated to uint8. Where ``weight``
    is 0 the result is exactly ``background``."""
    w = weight[:, :, None].astype(np.float32) / 255.0
    blended = foreground.astype(np.float32) * w + background.astype(np.float32) * (1 - w)
    return blended.clip(0, 255).astype(np.uint8)


def paste_back(original: np.ndarray, decoded_crop: np.ndarray, box: CropBox, feather: np.ndarray) -> np.ndarray:
    """The decoded crop Lanczos-resized to ``box``, pasted into a copy of ``original`` and alpha-blended with
    ``original`` through ``feather`` (:func:`soft_mask` of the full-size mask). Pixels where ``feather`` is 0 are
    exactly the original's."""
    if feather.shape != original.shape[:2]:
        raise ValueError(f"paste-back: feather mask {feather.shape} does not match the image {original.shape[:2]}")
    pasted = original.copy()
    pasted[box.top:box.bottom, box.left:box.right] = resample(decoded_crop, box.width, box.height)
    return alpha_blend(pasted, original, feather)
