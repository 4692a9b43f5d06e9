"""Opening images that come from outside (uploads, dropped files): the pixel count is checked from the header,
before anything is decoded, so a small file that describes a huge image is refused with one line.

Every image input goes through :func:`open_image`. PIL's own decompression-bomb guard is set to the same limit
(``Image.MAX_IMAGE_PIXELS``, PIL's documented setting): it warns above it and refuses above twice it, at open time.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

# Twice the largest image Foci makes (4096×4096): about 134 MB once decoded as RGBA.
MAX_IMAGE_PIXELS = 2 * 4096 * 4096
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageInputError(ValueError):
    """An input that is not an image Foci reads, or one with too many pixels."""


class ImageTooLargeError(ImageInputError):
    """An image whose header describes more than :data:`MAX_IMAGE_PIXELS` pixels (or a file above a byte limit)."""


class NotAnImageError(ImageInputError):
    """Bytes that no image reader recognises (a text file, an archive, …)."""


def check_pixels(width: int, height: int, *, what: str = "the image", limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse a ``width`` × ``height`` image above ``limit`` pixels with :class:`ImageTooLargeError`."""
    if width * height > limit:
        raise ImageTooLargeError(f"{what} is {width}×{height} ({width * height / 1e6:.1f} Mpx); Foci reads images "
                                 f"of at most {limit / 1e6:.1f} Mpx")


def open_image(source: str | Path | IO[bytes], *, what: str = "the image") -> Image.Image:
    """The image, opened lazily (only its header is read) after its pixel count passed :func:`check_pixels`.
    :class:`ImageInputError` for anything that is not a readable image or is too large; close it after use."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{what} has far more pixels than the {MAX_IMAGE_PIXELS / 1e6:.1f} Mpx Foci "
                                 "reads") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImageError(f"{what} is not an image file Foci can read") from None
    try:
        width, height = image.size
        check_pixels(width, height, what=what)
    except BaseException:
        image.close()
        raise
    return image
