"""``fooocus_fill`` (§2.12.5): a diffusion-like colour fill of the hole before inpainting with strength 1.

The crop is box-blurred over and over with shrinking radii; after every pass the pixels outside the mask are put
back, so colours flow from the known border into the hole. A box blur of radius ``r`` averages the
``(2r + 1) × (2r + 1)`` square around each pixel, edges replicated (PIL's ``BoxBlur(r)``, which Fooocus uses).
cv2's ``blur`` computes the same average in one rounding step (PIL rounds after each of its two 1-D passes, so single
pixels may differ by 1).
"""

from __future__ import annotations

import cv2
import numpy as np

# (radius, repeats), largest first.
FILL_PASSES: tuple[tuple[int, int], ...] = ((512, 2), (256, 2), (128, 4), (64, 4), (33, 8), (15, 8), (5, 16), (3, 16))


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2·radius + 1)²`` square around each pixel, image edges replicated; uint8 in, uint8 out."""
    size = 2 * int(radius) + 1
    return cv2.blur(image, (size, size), borderType=cv2.BORDER_REPLICATE)


def fooocus_fill(image: np.ndarray, mask: np.ndarray, passes: tuple[tuple[int, int], ...] = FILL_PASSES) -> np.ndarray:
    """Fill the masked part (``mask`` ≥ 127) of a uint8 ``(H, W, 3)`` image; pixels with ``mask`` < 127 are kept."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"fill: mask shape {mask.shape} does not match the image {image.shape[:2]}")
    keep = mask < 127
    known = image[keep]
    current = image.copy()
    for radius, repeats in passes:
        for _ in range(repeats):
            current = box_blur(current, radius)
            current[keep] = known
    return current
