"""Checks that stop a model file from making Foci allocate far more memory than the file holds.

A pickled tensor may describe a huge shape over a tiny storage (zero strides); LoRA factor pairs and LoKr
Kronecker factors may multiply out to far more elements than the layer they patch. Each is checked from shapes
alone, before anything is allocated, and refused with one line naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


class TensorSizeError(ValueError):
    """A tensor (or a product of factors) larger than what it stands for."""


def check_backed_by_storage(name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor whose shape describes more elements than its storage holds (a zero-stride view from a
    crafted pickle would grow to its full size on the first copy or dtype change)."""
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    if tensor.numel() > stored:
        raise TensorSizeError(f"tensor {name!r} describes {tuple(tensor.shape)} ({tensor.numel()} elements) but the "
                              f"file stores only {stored}: refused")


def check_state_dict(tensors: Mapping[str, torch.Tensor]) -> None:
    """:func:`check_backed_by_storage` for every tensor of a loaded pickle."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor):
            check_backed_by_storage(name, tensor)


def flat_shape(shape: Iterable[int]) -> tuple[int, int]:
    """The 2-D shape ``tensor.flatten(1)`` would have."""
    dims = tuple(int(d) for d in shape)
    return (dims[0], math.prod(dims[1:])) if dims else (1, 1)


def matmul_shape(name: str, left: tuple[int, int], right: tuple[int, int]) -> tuple[int, int]:
    """The shape of ``left @ right``; TensorSizeError when the inner sizes differ."""
    if left[1] != right[0]:
        raise TensorSizeError(f"{name}: factors {left} and {right} cannot be multiplied")
    return left[0], right[1]


def check_product(name: str, elements: int, limit: int, what: str) -> None:
    """Refuse a product of ``elements`` elements where the parameter it patches has ``limit``."""
    if elements != limit:
        raise TensorSizeError(f"{name}: {what} of {elements} elements does not fit the parameter it patches "
                              f"({limit} elements); refused before computing it")
