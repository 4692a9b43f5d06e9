"""Textual-inversion embeddings referenced in prompts as ``embedding:NAME`` (§1.10)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from foci.models.tensor_guard import TensorSizeError, check_backed_by_storage

EncoderKey = Literal["clip_l", "clip_g"]
EMBEDDING_EXTENSIONS: tuple[str, ...] = (".safetensors", ".pt", ".bin", ".pth")
# Vector width of each SDXL text encoder; used to pick entries out of list-style embedding files.
DEFAULT_EMBEDDING_SIZES: dict[str, int] = {"clip_l": 768, "clip_g": 1280}
# More vectors than this cannot be a textual inversion: CLIP reads 75 tokens per chunk, prompts a few chunks.
MAX_EMBEDDING_VECTORS = 75 * 8

logger = logging.getLogger(__name__)


def _search_folders(folders: Iterable[Path]) -> list[Path]:
    """Each folder followed by all of its subfolders (sorted, symlink loops visited once)."""
    result: list[Path] = []
    seen: set[str] = set()
    for folder in folders:
        root = os.path.abspath(folder)
        for current, subfolders, _files in os.walk(root, followlinks=True):
            subfolders.sort()
            real = os.path.realpath(current)
            if real in seen:
                subfolders.clear()
                continue
            seen.add(real)
            result.append(Path(current))
    return result


def _tensor_from_payload(payload: Any, encoder_key: str, embedding_size: int | None) -> torch.Tensor | None:
    """Pick the vectors for ``encoder_key`` out of a loaded embedding file (A1111, SDXL or list layouts)."""
    if isinstance(payload, torch.Tensor):
        return payload
    if isinstance(payload, dict):
        if "string_to_param" in payload:
            return next(iter(payload["string_to_param"].values()))
        if encoder_key in payload:
            return payload[encoder_key]
        values = [value for value in payload.values() if isinstance(value, torch.Tensor)]
        return values[0] if values else None
    if isinstance(payload, list):
        parts = []
        for entry in payload:
            for value in entry.values():
                if embedding_size is None or value.shape[-1] == embedding_size:
                    parts.append(value.reshape(-1, value.shape[-1]))
        return torch.cat(parts, dim=0) if parts else None
    return None


def _size_problem(tensor: torch.Tensor) -> str | None:
    """Why an embedding tensor cannot be one for this encoder (checked from its shape, before any copy)."""
    try:
        check_backed_by_storage("embedding", tensor)
    except TensorSizeError as error:
        return str(error)
    if tensor.dim() == 0:
        return "it holds a single number, not vectors"
    vectors = tensor.numel() // max(tensor.shape[-1], 1)  # the width is matched to the encoder by the caller
    if vectors > MAX_EMBEDDING_VECTORS:
        return f"it holds {vectors} vectors; at most {MAX_EMBEDDING_VECTORS} fit a prompt"
    return None


class EmbeddingLookup:
    """Finds and loads ``embedding:NAME`` files in the given folders (searched recursively, in order).

    ``NAME`` may carry its extension or not (``.safetensors``, ``.pt``, ``.bin``, ``.pth`` are tried). SDXL
    files hold ``clip_l`` [n, 768] and ``clip_g`` [n, 1280]; A1111 ``string_to_param`` files are also read.
    Only safetensors or ``torch.load(weights_only=True)`` are used. Loaded files are cached per instance.
    """

    def __init__(self, folders: Sequence[Path | str]):
        self.folders = [Path(folder) for folder in folders]
        self._payloads: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def find_file(self, name: str) -> Path | None:
        """Path of the file for embedding ``name``, or None. Names that escape a search folder are refused."""
        if not name:
            return None
        for folder in _search_folders(self.folders):
            base = os.path.abspath(folder)
            candidate = os.path.abspath(os.path.join(base, name))
            try:
                if os.path.commonpath((base, candidate)) != base:
                    continue
            except ValueError:
                continue
            if os.path.isfile(candidate):
                return Path(candidate)
            for extension in EMBEDDING_EXTENSIONS:
                if os.path.isfile(candidate + extension):
                    return Path(candidate + extension)
        return None

    def _load_payload(self, path: Path) -> Any:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._payloads:
                return self._payloads[key]
        if path.suffix.lower() == ".safetensors":
            import safetensors.torch

            payload: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
        with self._lock:
            self._payloads[key] = payload
        return payload

    def get(self, name: str, encoder_key: EncoderKey,
            embedding_size: int | None = None) -> torch.Tensor | None:
        """Vectors of embedding ``name`` for one encoder as an [n, dim] tensor; None if missing/unreadable."""
        path = self.find_file(name)
        if path is None:
            return None
        if embedding_size is None:
            embedding_size = DEFAULT_EMBEDDING_SIZES.get(encoder_key)
        try:
            payload = self._load_payload(path)
            tensor = _tensor_from_payload(payload, encoder_key, embedding_size)
        except Exception as error:  # a broken file must not abort the generation
            logger.warning("error loading embedding %s (%s), skipping it: %s", name, path, error)
            return None
        if tensor is None:
            logger.warning("embedding file %s holds no usable tensor, skipping it", path)
            return None
        problem = _size_problem(tensor)
        if problem is not None:
            logger.warning("embedding %s (%s) refused: %s", name, path, problem)
            return None
        tensor = tensor.detach()
        return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() != 2 else tensor

    def clear_cache(self) -> None:
        """Forget loaded files (they are re-read on the next lookup)."""
        with self._lock:
            self._payloads.clear()
