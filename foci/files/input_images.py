"""Input images and masks, kept by content: a file is named by the SHA-256 of its bytes.

A task names its input image and mask by that hash (``GenerationTask.input_image``), so a queued job survives a
restart, the image metadata records which image was used without its pixels, and the same upload is stored once.
Every file is checked to be a readable image of bounded size (:func:`foci.records.image_input.open_image`) before
it is kept.

    store = InputImageStore(Path("outputs/inputs"))
    digest = store.put_bytes(uploaded)          # 64 hex digits
    image = store.open(digest)                  # PIL image, header checked; close it after use
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from foci.records.image_input import ImageInputError, ImageTooLargeError, open_image

MAX_INPUT_BYTES = 64 * 1024 * 1024
"""The largest image or mask file accepted (a 4096² 16-bit PNG fits)."""
_HASH = re.compile(r"^[0-9a-f]{64}$")
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tiff"}


class InputImageMissing(ImageInputError):
    """A task names an input image the store does not hold."""


def image_digest(data: bytes) -> str:
    """The name of ``data`` in the store: its SHA-256 as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def check_image_bytes(data: bytes, *, what: str = "the image") -> str:
    """The PIL format name of ``data`` if it is a readable image within the size limits; else
    :class:`ImageTooLargeError` (bytes or pixels), ``NotAnImageError`` or :class:`ImageInputError` (empty,
    damaged, truncated). The pixels are decoded once, so a file that passes also loads in the worker."""
    if len(data) > MAX_INPUT_BYTES:
        raise ImageTooLargeError(f"{what} is {len(data) / 2**20:.1f} MiB; Foci accepts image files of at most "
                                 f"{MAX_INPUT_BYTES // 2**20} MiB")
    if not data:
        raise ImageInputError(f"{what} is empty")
    image = open_image(io.BytesIO(data), what=what)
    image_format = image.format or "PNG"
    try:
        image.verify()  # the file structure (PNG chunks and checksums): broken files fail here
        with open_image(io.BytesIO(data), what=what) as decoded:
            decoded.load()  # the pixels: a truncated JPEG or zlib stream fails here, not in the worker
    except ImageInputError:
        raise
    except Exception:
        raise ImageInputError(f"{what} is a damaged or truncated image file") from None
    finally:
        image.close()
    return image_format


class InputImageStore:
    """A folder of input images named ``<sha256>.<format suffix>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def put_bytes(self, data: bytes, *, what: str = "the image") -> str:
        """Keep ``data`` (checked with :func:`check_image_bytes`) and return its hash; storing twice is a no-op
        (the stored copy was checked when it came)."""
        digest = image_digest(data)
        if self.find(digest) is not None:
            return digest
        image_format = check_image_bytes(data, what=what)
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{digest}{_SUFFIXES.get(image_format, '.img')}"
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest

    def put_file(self, path: Path, *, what: str | None = None) -> str:
        """Keep the image file at ``path`` and return its hash."""
        path = Path(path)
        what = what or str(path)
        try:
            size = path.stat().st_size
        except OSError:
            raise ImageInputError(f"{what}: no such file") from None
        if size > MAX_INPUT_BYTES:
            raise ImageTooLargeError(f"{what} is {size / 2**20:.1f} MiB; Foci accepts image files of at most "
                                     f"{MAX_INPUT_BYTES // 2**20} MiB")
        return self.put_bytes(path.read_bytes(), what=what)

    def find(self, digest: str) -> Path | None:
        """The stored file of ``digest``, or None."""
        if not _HASH.match(digest):
            return None
        return next((path for path in self.folder.glob(f"{digest}.*") if not path.name.startswith(".")), None)

    def path(self, digest: str) -> Path:
        """The stored file of ``digest``; :class:`InputImageMissing` when it is not there."""
        found = self.find(digest)
        if found is None:
            raise InputImageMissing(f"input image {digest[:12]}… is not in {self.folder} (upload it again)")
        return found

    def open(self, digest: str, *, what: str = "the input image") -> Image.Image:
        """The stored image, opened (header checked); close it after use."""
        return open_image(self.path(digest), what=what)
