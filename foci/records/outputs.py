"""Output files: Fooocus's path layout, atomic deterministic saving with metadata, and read-back (§1.11).

Embedded metadata layout (what Fooocus reads, plus one Foci addition):

* PNG text chunks: ``parameters`` = payload of the chosen scheme, ``fooocus_scheme`` = that scheme, and the
  payload of the *other* scheme under ``foci_<other scheme>`` (``foci_a1111`` next to a fooocus payload,
  ``foci_fooocus`` next to an a1111 payload), so both are always present.
* JPEG / WebP EXIF (IFD0): ``0x9286`` UserComment = payload, ``0x927C`` MakerNote = scheme, ``0x0131``
  Software = ``record.software``.
  An ASCII payload is stored as plain text (what Fooocus reads); any other payload as the EXIF ``UNICODE``
  character code followed by UTF-16BE (what A1111 writes), since plain EXIF text cannot hold non-ASCII.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from foci.records.image_input import ImageInputError, open_image
from foci.records.metadata import METADATA_SCHEMES, ImageRecord, to_a1111_text, to_fooocus_json

OUTPUT_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
LOSSY_QUALITY = 95
EXIF_USER_COMMENT = 0x9286
EXIF_MAKER_NOTE = 0x927C
EXIF_SOFTWARE = 0x0131
EXIF_IFD_POINTER = 0x8769
PNG_PARAMETERS_KEY = "parameters"
PNG_SCHEME_KEY = "fooocus_scheme"
_UNICODE_CODE = b"UNICODE\x00"
_ASCII_CODE = b"ASCII\x00\x00\x00"
_MAX_NAME_DRAWS = 10_000


def new_output_path(
    root: Path, fmt: str, *, now: datetime | None = None, rng: random.Random | None = None
) -> Path:
    """``<root>/<YYYY-MM-DD>/<YYYY-MM-DD_HH-MM-SS>_<1000-9999>.<fmt>``, redrawing the number while taken.

    Creates the day folder. ``fmt`` is ``png``, ``jpeg`` or ``webp`` (``jpg`` is written as ``jpeg``).
    """
    extension = _extension(fmt)
    moment = now or datetime.now()
    draw = rng or random.Random()
    folder = Path(root) / moment.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = moment.strftime("%Y-%m-%d_%H-%M-%S")
    for _ in range(_MAX_NAME_DRAWS):
        candidate = folder / f"{stamp}_{draw.randint(1000, 9999)}.{extension}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free output name left for {stamp} in {folder}")


def _extension(fmt: str) -> str:
    key = fmt.lower().lstrip(".")
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; expected png, jpeg or webp")
    return "jpeg" if key == "jpg" else key


def _payloads(record: ImageRecord, scheme: str) -> tuple[str, str, str]:
    """(chosen payload, other scheme, other payload)."""
    if scheme not in METADATA_SCHEMES:
        raise ValueError(f"unknown metadata scheme {scheme!r}; expected one of {', '.join(METADATA_SCHEMES)}")
    fooocus, a1111 = to_fooocus_json(record), to_a1111_text(record)
    return (fooocus, "a1111", a1111) if scheme == "fooocus" else (a1111, "fooocus", fooocus)


def _encode_user_comment(text: str) -> str | bytes:
    if text.isascii():
        return text
    return _UNICODE_CODE + text.encode("utf-16-be")


def _decode_exif_text(value: object) -> str | None:
    """Text from an EXIF value: plain text, or UserComment bytes with an 8-byte character-code prefix."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.rstrip("\x00")
    if not isinstance(value, bytes):
        return str(value)
    if value.startswith(_UNICODE_CODE):
        body = value[len(_UNICODE_CODE):]
        if body.startswith((b"\xff\xfe", b"\xfe\xff")):
            return body.decode("utf-16")
        return body.decode("utf-16-be", errors="replace")
    if value.startswith(_ASCII_CODE) or value.startswith(b"\x00" * 8):
        value = value[8:]
    return value.decode("utf-8", errors="replace").rstrip("\x00")


def _save_options(image_format: str, record: ImageRecord | None, scheme: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if image_format == "JPEG":
        options.update(quality=LOSSY_QUALITY, optimize=True, progressive=True)
    elif image_format == "WEBP":
        options.update(quality=LOSSY_QUALITY, lossless=False)
    if record is None:
        return options
    payload, other_scheme, other_payload = _payloads(record, scheme)
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_PARAMETERS_KEY, payload)
        info.add_text(PNG_SCHEME_KEY, scheme)
        info.add_text(f"foci_{other_scheme}", other_payload)
        options["pnginfo"] = info
    else:
        exif = Image.Exif()
        exif[EXIF_USER_COMMENT] = _encode_user_comment(payload)
        exif[EXIF_MAKER_NOTE] = scheme
        exif[EXIF_SOFTWARE] = record.software
        options["exif"] = exif
    return options


def save_image(
    image: Image.Image, path: Path, *, record: ImageRecord | None, scheme: str = "fooocus"
) -> Path:
    """Write ``image`` to ``path`` (format from the suffix) with the record's metadata; returns the path.

    JPEG: quality 95, optimized, progressive; WebP: lossy quality 95. ``record`` None writes no metadata.
    The same image and record always give the same bytes. The file is written next to its target and moved
    into place with ``os.replace``, so readers never see a half-written image.
    """
    target = Path(path)
    image_format = OUTPUT_FORMATS[_extension(target.suffix)]
    options = _save_options(image_format, record, scheme)
    if image_format == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            image.save(handle, format=image_format, **options)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def read_metadata(path: Path) -> tuple[str, str | dict[str, Any]] | None:
    """(scheme, payload) embedded in an image, or None. PNG text chunks first, then EXIF.

    A fooocus payload comes back as a dict when it is a JSON object; a missing or unknown scheme is inferred
    (JSON object → fooocus, other text → a1111). Raises ValueError for a file that is not a readable image.
    """
    with open_image(path, what=str(path)) as image:
        try:
            text_chunks: dict[str, Any] = dict(getattr(image, "text", None) or {})
            payload: str | None = text_chunks.get(PNG_PARAMETERS_KEY)
            scheme: str | None = text_chunks.get(PNG_SCHEME_KEY)
            if payload is None:
                exif = image.getexif()
                sub_ifd = exif.get_ifd(EXIF_IFD_POINTER)
                payload = _decode_exif_text(exif.get(EXIF_USER_COMMENT, sub_ifd.get(EXIF_USER_COMMENT)))
                scheme = _decode_exif_text(exif.get(EXIF_MAKER_NOTE, sub_ifd.get(EXIF_MAKER_NOTE)))
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:  # a damaged file, found when decoding
            raise ImageInputError(f"{path} is not an image file Foci can read: {error}") from None
    if payload is None:
        return None
    if scheme not in METADATA_SCHEMES:
        scheme = None
    if scheme == "a1111":
        return scheme, payload
    try:
        parsed = json.loads(payload)
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        return "fooocus", parsed
    return scheme or "a1111", payload


def format_metadata_for_cli(path: Path) -> str:
    """What ``foci metadata FILE`` prints: pretty JSON (fooocus), the text (a1111), or a clear notice."""
    found = read_metadata(path)
    if found is None:
        return f"{path}: no generation metadata found (it was saved without metadata or by another program)"
    _, payload = found
    if isinstance(payload, dict):
        return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)
    return payload
