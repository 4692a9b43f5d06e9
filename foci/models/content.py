"""Is a downloaded file what its name and model kind say it is? Checked before it is moved into place.

- ``.safetensors``: the header parses and describes exactly the bytes present; a checkpoint must be detected as
  SDXL base or refiner (:func:`foci.models.checkpoint.detect_architecture`), a LoRA must hold LoRA patches.
- ``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.patch``: opens with ``torch.load(weights_only=True)`` (never
  unpickling code) and holds tensors; the same kind checks as above for checkpoints and LoRAs.
- ``.txt``, ``.csv``, ``.json``: UTF-8 text without NUL bytes, not an HTML page; JSON must parse.
- ``.onnx``: a protobuf model, not a text or HTML page.
- anything else: not an HTML page.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

SAFETENSORS = (".safetensors", ".sft")
TORCH = (".pth", ".pt", ".bin", ".ckpt", ".patch")
TEXT = (".txt", ".csv", ".json")
_HTML_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--")
_MAX_TEXT_BYTES = 64 << 20


class ContentError(ValueError):
    """A file whose content does not match its name and model kind."""


def check_model_file(path: str | Path, file_name: str, kind: str) -> None:
    """Raise :class:`ContentError` unless ``path`` (possibly a ``.part`` file) holds a valid ``file_name`` of
    model kind ``kind`` (a :data:`foci.files.folders.MODEL_KINDS` name)."""
    path = Path(path)
    suffix = Path(file_name).suffix.lower()
    head = _head(path)
    if not head:
        raise ContentError("the file is empty")
    if _looks_like_html(head):
        raise ContentError("the server sent an HTML page, not the file")
    if suffix in SAFETENSORS:
        _check_tensors(path, "safetensors", kind)
    elif suffix in TORCH:
        _check_tensors(path, "pickle", kind)
    elif suffix in TEXT:
        _check_text(path, suffix)
    elif suffix == ".onnx" and head[:1] != b"\x08":
        raise ContentError("not an ONNX model (it does not start with a protobuf ir_version field)")


def _head(path: Path, size: int = 64) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _looks_like_html(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def _check_tensors(path: Path, file_format: Literal["safetensors", "pickle"], kind: str) -> None:
    from foci.models.checkpoint import CheckpointError, detect_architecture, read_tensor_shapes

    if file_format == "safetensors":
        try:
            shapes = read_tensor_shapes(path, "safetensors")  # the header describes exactly the bytes present
        except CheckpointError as error:
            raise ContentError(_strip_path(error, path)) from None
        if not shapes:
            raise ContentError("the safetensors file holds no tensors")
    if kind == "checkpoints":
        try:
            detect_architecture(read_tensor_shapes(path, file_format), "the file")
        except CheckpointError as error:
            raise ContentError(f"not a usable SDXL checkpoint: {_strip_path(error, path)}") from None
    elif kind == "loras" or (kind == "inpaint" and path.name.removesuffix(".part").endswith(".patch")):
        _check_lora(path)
    elif file_format == "pickle":
        _check_torch_archive(path)


def _check_lora(path: Path) -> None:
    from foci.models.lora_formats import LoraError, group_patches, read_lora_file

    try:
        patches, _ = group_patches(read_lora_file(path))
    except LoraError as error:
        raise ContentError(_strip_path(error, path)) from None
    if not patches:
        raise ContentError("holds no LoRA patches (no up/down, LoHa, LoKr, GLoRA, diff or Fooocus entries)")


def _check_torch_archive(path: Path) -> None:
    """``torch.load(weights_only=True)`` succeeds and the result holds at least one tensor."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # any failure to parse means the bytes are not a PyTorch weights file
        detail = " ".join(str(error).split())[:200]
        raise ContentError(f"not a PyTorch weights file that opens with weights_only ({type(error).__name__}: "
                           f"{detail})") from None
    if not any(isinstance(value, torch.Tensor) for value in _leaves(loaded)):
        raise ContentError(f"the PyTorch file holds no tensors (a {type(loaded).__name__})")


def _leaves(value: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 8:
        return
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item, depth + 1)
    else:
        yield value


def _check_text(path: Path, suffix: str) -> None:
    if path.stat().st_size > _MAX_TEXT_BYTES:
        raise ContentError(f"a text file over {_MAX_TEXT_BYTES >> 20} MiB")
    data = path.read_bytes()
    if b"\0" in data:
        raise ContentError("not a text file (it holds NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContentError(f"not UTF-8 text ({error})") from None
    if suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            raise ContentError(f"not valid JSON ({error})") from None


def _strip_path(error: Exception, path: Path) -> str:
    """The error text without the temporary file's path in front of it."""
    return str(error).replace(f"{path}: ", "").replace(str(path), "the file")
