"""Input images and inpaint masks as Fooocus prepares them (§2.12 steps 1–2).

Images are ``uint8`` arrays of shape ``(H, W, 3)``; masks are ``uint8`` arrays of shape ``(H, W)`` where 255 means
"repaint" and 0 "keep".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, ImageOps

from foci.records.image_input import open_image

OUTPAINT_DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
OUTPAINT_FRACTION = 0.3
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class MaskError(ValueError):
    """A mask that cannot be used with its image (wrong shape, unknown outpaint direction, …)."""


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale scaled to 8 bits (PIL's own conversion would clip instead of scale)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8))
    return image


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` → ``(H, W, 3)``: colour·α + 255·(1 − α) in float32, clipped and truncated to uint8 (Fooocus's
    ``HWC3``)."""
    color = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """An input image as ``(H, W, 3)`` uint8 RGB: EXIF orientation applied, 16-bit grayscale scaled to 8 bits,
    palette and grayscale expanded, transparency composited on white."""
    image = _eight_bit(ImageOps.exif_transpose(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        return composite_on_white(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def mask_image_to_rgb(image: Image.Image) -> np.ndarray:
    """An uploaded mask image as ``(H, W, 3)`` uint8: EXIF orientation applied, 16-bit scaled, any alpha channel
    dropped (a transparent pixel counts by its colour, as a browser upload converted to RGB does)."""
    image = _eight_bit(ImageOps.exif_transpose(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def read_rgb(source: str | Path | IO[bytes], *, what: str = "the input image") -> np.ndarray:
    """Open (header-checked by :func:`foci.records.image_input.open_image`) and normalise an input image."""
    with open_image(source, what=what) as image:
        return image_to_rgb(image)


def read_mask(source: str | Path | IO[bytes], *, what: str = "the mask") -> np.ndarray:
    """Open and normalise an uploaded mask image to ``(H, W, 3)`` uint8 (see :func:`mask_image_to_rgb`)."""
    with open_image(source, what=what) as image:
        return mask_image_to_rgb(image)


def resample(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of a uint8 image or mask to ``width`` × ``height`` (PIL's filter, as Fooocus uses)."""
    resized = Image.fromarray(array).resize((int(width), int(height)), resample=Image.Resampling.LANCZOS)
    return np.asarray(resized)


# ----------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------


def canvas_mask(sketch: np.ndarray) -> np.ndarray:
    """The mask painted on the sketch canvas: channel 0 of its layer (a 2-D array is taken as is)."""
    if sketch.ndim == 3:
        sketch = sketch[:, :, 0]
    if sketch.ndim != 2:
        raise MaskError(f"a canvas mask must be a 2-D or 3-D array, got shape {sketch.shape}")
    return np.ascontiguousarray(sketch.astype(np.uint8, copy=False))


def binarise_uploaded_mask(mask_rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """An uploaded mask resized (Lanczos) to the image, averaged over its channels and thresholded at > 127
    to 0/255. A 2-D mask is treated as gray."""
    if mask_rgb.ndim == 2:
        mask_rgb = np.repeat(mask_rgb[:, :, None], 3, axis=2)
    resized = resample(np.ascontiguousarray(mask_rgb.astype(np.uint8, copy=False)), width, height)
    return (np.mean(resized, axis=2) > 127).astype(np.uint8) * 255


def erode_or_dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Dilate (k > 0) or erode (k < 0) with a 3×3 ones kernel, |k| iterations (cv2, as Fooocus); k = 0 → unchanged."""
    k = int(k)
    kernel = np.ones((3, 3), dtype=np.uint8)
    if k > 0:
        return cv2.dilate(mask, kernel, iterations=k)
    if k < 0:
        return cv2.erode(mask, kernel, iterations=-k)
    return mask


def assemble_mask(
    height: int,
    width: int,
    *,
    canvas: np.ndarray | None = None,
    uploaded: np.ndarray | None = None,
    grow: int = 0,
    invert: bool = False,
) -> np.ndarray:
    """The inpaint mask for an image of ``height`` × ``width`` (§2.12.1).

    ``canvas``: the painted mask, image-sized (channel 0 is used). ``uploaded``: a mask image of any size (advanced
    masking), resized and binarised by :func:`binarise_uploaded_mask`; both are max-combined. Then
    :func:`erode_or_dilate` by ``grow`` and, with ``invert``, ``255 − mask``. No mask at all gives an empty one.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    if canvas is not None:
        painted = canvas_mask(canvas)
        if painted.shape != (height, width):
            raise MaskError(f"the canvas mask is {painted.shape[1]}×{painted.shape[0]} but the image is "
                            f"{width}×{height}")
        mask = np.maximum(mask, painted)
    if uploaded is not None:
        mask = np.maximum(mask, binarise_uploaded_mask(uploaded, width, height))
    mask = erode_or_dilate(mask, grow)
    if invert:
        mask = 255 - mask
    return np.ascontiguousarray(mask)


def has_inpaint_work(mask: np.ndarray, outpaint: Iterable[str] = ()) -> bool:
    """Whether Fooocus inpaints at all: some mask pixel > 127, or an outpaint direction is chosen."""
    return bool(np.any(mask > 127)) or bool(list(outpaint))


# ----------------------------------------------------------------------------------------------------
# Outpaint
# ----------------------------------------------------------------------------------------------------


def outpaint_directions(directions: Iterable[str]) -> tuple[str, ...]:
    """Normalise outpaint directions (case-insensitive, duplicates dropped); unknown names raise :class:`MaskError`."""
    chosen = []
    for direction in directions:
        name = str(direction).strip().lower()
        if name not in OUTPAINT_DIRECTIONS:
            raise MaskError(f"unknown outpaint direction {direction!r}; known: {', '.join(OUTPAINT_DIRECTIONS)}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def outpaint(image: np.ndarray, mask: np.ndarray, directions: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pad for outpainting (§2.12.2): top/bottom by ``int(0.3·H)`` rows, then left/right by ``int(0.3·W)`` columns
    of the already padded size; the image is edge-replicated, the mask padded with 255."""
    chosen = outpaint_directions(directions)
    if image.shape[:2] != mask.shape:
        raise MaskError(f"mask shape {mask.shape} does not match the image {image.shape[:2]}")
    rows = int(image.shape[0] * OUTPAINT_FRACTION)
    top, bottom = rows * ("top" in chosen), rows * ("bottom" in chosen)
    image = np.pad(image, ((top, bottom), (0, 0), (0, 0)), mode="edge")
    mask = np.pad(mask, ((top, bottom), (0, 0)), mode="constant", constant_values=255)
    columns = int(image.shape[1] * OUTPAINT_FRACTION)
    left, right = columns * ("left" in chosen), columns * ("right" in chosen)
    image = np.pad(image, ((0, 0), (left, right), (0, 0)), mode="edge")
    mask = np.pad(mask, ((0, 0), (left, right)), mode="constant", constant_values=255)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
