"""Reading checkpoint files: safetensors headers and tensors, PyTorch pickles (weights only), tensor shapes."""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from foci.models.checkpoint.layout import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    CorruptFileError,
    Shapes,
)
from foci.models.tensor_guard import TensorSizeError, check_state_dict

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a model file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header, checking that the data section is complete."""
    _check_file(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptFileError(
                f"{path}: not a valid safetensors file (header length {header_len} for a {size}-byte file)"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a valid safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    data_size = size - 8 - header_len
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(dim) for dim in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: corrupt safetensors header entry for {name!r}") from exc
        itemsize = _DTYPE_BYTES.get(dtype)
        if end < begin or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise CorruptFileError(
                f"{path}: corrupt safetensors header: tensor {name!r} has inconsistent size"
            )
        data_end = max(data_end, end)
    if data_end > data_size:
        raise CorruptFileError(
            f"{path}: file is truncated ({data_size} bytes of tensor data, header describes {data_end})"
        )
    if data_end < data_size:
        raise CorruptFileError(
            f"{path}: corrupt safetensors file ({data_size - data_end} unexpected trailing bytes)"
        )
    return header


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors (``weights_only``); unwraps a top-level ``state_dict``."""
    _check_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        detail = " ".join(detail.split(" Please use")[0].split())
        if "global" in detail.lower():
            reason = "it references Python objects that could run code"
        else:
            reason = "it is not a plain PyTorch weights pickle"
        raise CorruptFileError(f"{path}: not loaded: {reason} ({detail[:160]})") from exc
    except Exception as exc:  # any failure to parse the file is reported as a bad checkpoint
        raise CorruptFileError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise CorruptFileError(f"{path}: PyTorch file holds a {type(loaded).__name__}, not a state dict")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CorruptFileError(f"{path}: PyTorch file holds no tensors")
    try:
        check_state_dict(tensors)
    except TensorSizeError as error:
        raise CorruptFileError(f"{path}: {error}") from None
    return tensors


def _file_kind(path: Path) -> Literal["safetensors", "pickle"]:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    raise CorruptFileError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; "
        f"expected one of {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def read_tensor_shapes(path: str | Path, file_format: Literal["safetensors", "pickle"] | None = None) -> Shapes:
    """Tensor names → shapes of a model file (only the header is read for safetensors).

    The format follows the file name's suffix unless ``file_format`` names it (e.g. for a ``.part`` download).
    """
    path = Path(path)
    _check_file(path)
    if (file_format or _file_kind(path)) == "safetensors":
        header = _read_safetensors_header(path)
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in _torch_load(path).items()}


def _read_tensors(path: Path, wanted: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a file, or only those whose names start with one of ``wanted``."""
    if _file_kind(path) == "pickle":
        tensors = _torch_load(path)
        return {k: v for k, v in tensors.items() if wanted is None or k.startswith(wanted)}
    _read_safetensors_header(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if wanted is None or k.startswith(wanted)}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types from Rust
        raise CorruptFileError(f"{path}: could not read tensors ({type(exc).__name__}: {exc})") from exc
