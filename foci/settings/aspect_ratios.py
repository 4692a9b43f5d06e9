"""The SDXL aspect ratios Fooocus offers (§1.3) and their display labels."""

from __future__ import annotations

from math import gcd

from foci.task import parse_size

SDXL_ASPECT_RATIOS: tuple[str, ...] = (
    "704*1408", "704*1344", "768*1344", "768*1280", "832*1216", "832*1152", "896*1152", "896*1088",
    "960*1088", "960*1024", "1024*1024", "1024*960", "1088*960", "1088*896", "1152*896", "1152*832",
    "1216*832", "1280*768", "1344*768", "1344*704", "1408*704", "1472*704", "1536*640", "1600*640",
    "1664*576", "1728*576",
)
DEFAULT_ASPECT_RATIO = "1152*896"


class AspectRatioError(ValueError):
    """An aspect-ratio string that is not ``W*H`` with positive integers."""


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """(width, height) of ``"1152*896"``, ``"1152x896"``, ``"1152×896"`` or a label ``"1152×896 (9:7)"``."""
    try:
        width, height = parse_size(value)
    except ValueError as error:
        raise AspectRatioError(f"aspect ratio must look like 1152*896, got {value!r}") from error
    if width <= 0 or height <= 0:
        raise AspectRatioError(f"aspect ratio {value!r} needs a positive width and height")
    return width, height


def normalize_aspect_ratio(value: str) -> str:
    """The canonical ``"W*H"`` form of any accepted aspect-ratio spelling."""
    width, height = parse_aspect_ratio(value)
    return f"{width}*{height}"


def aspect_label(value: str) -> str:
    """Display label with the reduced ratio, e.g. ``"1152*896"`` → ``"1152×896 (9:7)"``."""
    width, height = parse_aspect_ratio(value)
    divisor = gcd(width, height)
    return f"{width}×{height} ({width // divisor}:{height // divisor})"
