"""Sizes and boxes: the shape-ceil rules, the inpaint crop by respective field (§2.12.3–5) and the Vary / Upscale
size and strength rules (§2.13).

A box is ``(top, bottom, left, right)`` in pixels, bottom/right exclusive (Fooocus's ``a, b, c, d``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from foci.imaging.fill import fooocus_fill
from foci.imaging.masks import resample

INPAINT_SHAPE_CEIL = 1024
VARY_SHAPE_CEIL_RANGE = (1024, 2048)
UPSCALE_MIN_SHAPE_CEIL = 1024
UPSCALE_DIRECT_ABOVE = 2800
VARY_STRENGTHS = {"subtle": 0.5, "strong": 0.85}
UPSCALE_STRENGTH = 0.382
UOV_METHODS: tuple[str, ...] = ("Disabled", "Vary (Subtle)", "Vary (Strong)", "Upscale (1.5x)", "Upscale (2x)",
                                "Upscale (Fast 2x)")


# ----------------------------------------------------------------------------------------------------
# Shape ceil
# ----------------------------------------------------------------------------------------------------


def shape_ceil(height: float, width: float) -> int:
    """``ceil(sqrt(h·w) / 64) · 64``: the side of the 64-multiple square with at least the image's area."""
    return int(math.ceil(((height * width) ** 0.5) / 64.0) * 64)


def size_for_shape_ceil(height: int, width: int, target: int) -> tuple[int, int]:
    """``(height, width)``, both multiples of 64, whose shape ceil is ``target`` (Fooocus's ``set_image_shape_ceil``:
    up to 256 rescaling rounds, each side rounded half-to-even to a multiple of 64). An image whose shape ceil is
    already ``target`` keeps its size."""
    h, w = height, width
    for _ in range(256):
        current = shape_ceil(h, w)
        if abs(current - target) < 0.1:
            break
        k = float(target) / current
        h = int(round(float(h) * k / 64.0) * 64)
        w = int(round(float(w) * k / 64.0) * 64)
    return h, w


def set_image_shape_ceil(image: np.ndarray, target: int) -> np.ndarray:
    """``image`` Lanczos-resized to :func:`size_for_shape_ceil` (the same array when the size does not change)."""
    height, width = image.shape[:2]
    new_height, new_width = size_for_shape_ceil(height, width, target)
    if (new_height, new_width) == (height, width):
        return image
    return resample(image, new_width, new_height)


# ----------------------------------------------------------------------------------------------------
# The inpaint crop
# ----------------------------------------------------------------------------------------------------


class CropBox(NamedTuple):
    """Rows ``top:bottom`` and columns ``left:right`` of an image."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def clipped(self, height: int, width: int) -> CropBox:
        """The box with every edge clamped into the image."""
        return CropBox(min(max(self.top, 0), height), min(max(self.bottom, 0), height),
                       min(max(self.left, 0), width), min(max(self.right, 0), width))

    def of(self, array: np.ndarray) -> np.ndarray:
        """The part of ``array`` (first two axes rows, columns) inside the box."""
        return array[self.top:self.bottom, self.left:self.right]


def initial_box(mask: np.ndarray) -> CropBox:
    """The square around the centre of the mask's (> 0) bounding box, half-side ``int(1.15 · max(half-height,
    half-width))`` (halves and centre floored), clipped to the image. An empty mask raises ``ValueError``."""
    rows, columns = np.nonzero(mask > 0)
    if rows.size == 0:
        raise ValueError("the inpaint mask is empty: nothing to crop around")
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(columns.min()), int(columns.max())
    middle_row, half_height = (bottom + top) // 2, (bottom - top) // 2
    middle_column, half_width = (right + left) // 2, (right - left) // 2
    half = int(max(half_height, half_width) * 1.15)
    box = CropBox(middle_row - half, middle_row + half + 1, middle_column - half, middle_column + half + 1)
    return box.clipped(*mask.shape[:2])


def grow_box(box: CropBox, height: int, width: int, field: float) -> CropBox:
    """Grow ``box`` until it is at least ``field·height`` tall and ``field·width`` wide (§2.12.3).

    Each round adds one pixel on both sides of the shorter dimension (rows when the box is less tall than wide,
    else columns; a dimension that already spans the image also grows the other), then clamps to the image.
    ``field`` = 1 is the whole image; 0 keeps the box.
    """
    field = float(field)
    if not 0.0 <= field <= 1.0:
        raise ValueError(f"respective field must be within 0…1, got {field}")
    if field == 1.0:
        return CropBox(0, height, 0, width)
    top, bottom, left, right = box
    while not (bottom - top >= height * field and right - left >= width * field):
        grow_rows = (bottom - top) < (right - left)
        grow_columns = not grow_rows
        if bottom - top == height:
            grow_columns = True
        if right - left == width:
            grow_rows = True
        if grow_rows:
            top, bottom = top - 1, bottom + 1
        if grow_columns:
            left, right = left - 1, right + 1
        top, bottom, left, right = CropBox(top, bottom, left, right).clipped(height, width)
    return CropBox(top, bottom, left, right)


def respective_field_box(mask: np.ndarray, field: float) -> CropBox:
    """The crop Fooocus inpaints: :func:`initial_box` of the mask grown by :func:`grow_box` to ``field``."""
    height, width = mask.shape[:2]
    return grow_box(initial_box(mask), height, width, field)


def binarise(mask: np.ndarray, threshold: int = 127) -> np.ndarray:
    """255 where ``mask`` > ``threshold``, else 0 (uint8)."""
    return (mask > threshold).astype(np.uint8) * 255


@dataclass(frozen=True)
class InpaintCrop:
    """What the sampler works on: the crop box in the full image and the crop at shape ceil 1024."""

    box: CropBox
    image: np.ndarray  # the crop, super-resolved when small, at shape ceil 1024
    mask: np.ndarray  # its mask resized the same way, 0/255
    fill: np.ndarray  # ``image`` with the hole filled by fooocus_fill (``image`` itself without fill)


def prepare_inpaint_crop(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    field: float,
    use_fill: bool,
    upscale: Callable[[np.ndarray], np.ndarray],
) -> InpaintCrop:
    """Crop by respective field, super-resolve with ``upscale`` when the crop's shape ceil is < 1024, resize to shape
    ceil 1024, resize and binarise the mask (> 127), and fill the hole when ``use_fill`` (Fooocus fills when the
    strength is > 0.99)."""
    box = respective_field_box(mask, field)
    crop = box.of(image)
    if shape_ceil(*crop.shape[:2]) < INPAINT_SHAPE_CEIL:
        crop = upscale(crop)
    crop = set_image_shape_ceil(crop, INPAINT_SHAPE_CEIL)
    height, width = crop.shape[:2]
    crop_mask = binarise(resample(np.ascontiguousarray(box.of(mask)), width, height))
    fill = fooocus_fill(crop, crop_mask) if use_fill else crop
    return InpaintCrop(box, crop, crop_mask, fill)


# ----------------------------------------------------------------------------------------------------
# Vary and Upscale
# ----------------------------------------------------------------------------------------------------


def vary_shape_ceil(height: int, width: int) -> int:
    """The shape ceil an image is varied at: its own, clamped into [1024, 2048]."""
    low, high = VARY_SHAPE_CEIL_RANGE
    return min(max(shape_ceil(height, width), low), high)


def vary_image(image: np.ndarray) -> np.ndarray:
    """The input of Vary: resized only when its shape ceil is outside [1024, 2048] (§2.13)."""
    return set_image_shape_ceil(image, vary_shape_ceil(*image.shape[:2]))


def uov_strength(method: str, *, overwrite_vary: float = -1, overwrite_upscale: float = -1) -> float:
    """The denoising strength of an Upscale-or-Variation method: Vary 0.5 / 0.85, Upscale 0.382; a positive
    developer overwrite wins. Methods are matched case-insensitively, like Fooocus."""
    name = method.casefold()
    if "vary" in name:
        strength = next(value for key, value in VARY_STRENGTHS.items() if key in name)
        return overwrite_vary if overwrite_vary > 0 else strength
    if "upscale" in name:
        return overwrite_upscale if overwrite_upscale > 0 else UPSCALE_STRENGTH
    raise ValueError(f"{method!r} is not an Upscale or Variation method; known: {', '.join(UOV_METHODS[1:])}")


@dataclass(frozen=True)
class UpscalePlan:
    """How Upscale sizes the super-resolved image and whether diffusion runs afterwards."""

    factor: float  # 1.5 or 2 (of the input size)
    shape_ceil: int  # of the target: that of factor × the input, or 1024 when that was smaller
    to_shape_ceil: bool  # True: resize the SR image to shape ceil 1024; False: to exactly factor × the input
    direct_return: bool  # Fast 2x, or a target shape ceil above 2800: the resized SR image is the result
    size: tuple[int, int]  # (height, width) of the target when not to_shape_ceil


def plan_upscale(height: int, width: int, method: str) -> UpscalePlan:
    """The Upscale rules of §2.13 for an input of ``height`` × ``width``."""
    name = method.casefold()
    factor = 1.5 if "1.5x" in name else 2.0 if "2x" in name else 1.0
    target_ceil = shape_ceil(height * factor, width * factor)
    to_shape_ceil = target_ceil < UPSCALE_MIN_SHAPE_CEIL
    if to_shape_ceil:
        target_ceil = UPSCALE_MIN_SHAPE_CEIL
    direct = "fast" in name or target_ceil > UPSCALE_DIRECT_ABOVE
    return UpscalePlan(factor, target_ceil, to_shape_ceil, direct, (int(height * factor), int(width * factor)))


def resize_upscaled(super_resolved: np.ndarray, plan: UpscalePlan) -> np.ndarray:
    """The super-resolved image brought to the plan's size (Lanczos)."""
    if plan.to_shape_ceil:
        return set_image_shape_ceil(super_resolved, UPSCALE_MIN_SHAPE_CEIL)
    height, width = plan.size
    return resample(super_resolved, width, height)
