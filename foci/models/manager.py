"""Keeping loaded models within a memory budget, and where their weights live between uses (issue 4 item 4).

* ``ModelCache``: loaded checkpoints (with their merged LoRAs) kept by key, least recently used evicted first
  once the budget is exceeded; models in use by the running task are pinned.
* ``VramPolicy``: ``high`` keeps every cached model on the GPU; ``normal`` moves the models a step needs onto the
  GPU and the others back to system RAM (Fooocus's always-offload); ``low`` streams weights per layer
  (accelerate's sequential CPU offload) for GPUs of 4 GiB and less. CPU and MPS (unified memory) use ``high``.
"""

from __future__ import annotations

import enum
import logging
import os
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

_log = logging.getLogger(__name__)
GIB = 1 << 30
Value = TypeVar("Value")


class VramPolicy(str, enum.Enum):
    """Where model weights live on a GPU machine."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


def choose_vram_policy(device: torch.device, requested: str = "auto", *, total_bytes: int | None = None) -> VramPolicy:
    """``requested`` unless "auto": CPU/MPS → high; CUDA → low up to 4 GiB (as Fooocus), high from 20 GiB
    (a full SDXL base + refiner stay resident), normal in between."""
    if requested != "auto":
        try:
            return VramPolicy(requested)
        except ValueError:
            raise ValueError(f"--vram must be auto, high, normal or low, got {requested!r}") from None
    if device.type != "cuda":
        return VramPolicy.HIGH
    if total_bytes is None:
        total_bytes = torch.cuda.get_device_properties(device).total_memory
    if total_bytes <= 4 * GIB:
        return VramPolicy.LOW
    return VramPolicy.HIGH if total_bytes >= 20 * GIB else VramPolicy.NORMAL


def system_memory_bytes() -> int:
    """Physical memory of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_cache_budget() -> int:
    """Half of the system memory: one fp32 SDXL (≈13.5 GB) on 32 GB, two bf16 ones on 24 GB."""
    memory = system_memory_bytes()
    return memory // 2 if memory else 8 * GIB


def module_bytes(modules: Iterable[torch.nn.Module | None]) -> int:
    """Bytes of parameters and buffers of the given modules."""
    total = 0
    for module in modules:
        if module is None:
            continue
        total += sum(p.numel() * p.element_size() for p in module.parameters())
        total += sum(b.numel() * b.element_size() for b in module.buffers())
    return total


@dataclass
class ModelCache(Generic[Value]):
    """Least-recently-used cache of loaded models with a byte budget."""

    budget_bytes: int = field(default_factory=default_cache_budget)
    _entries: OrderedDict[Hashable, tuple[Value, int]] = field(default_factory=OrderedDict, repr=False)

    def get(self, key: Hashable) -> Value | None:
        """The cached value (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Value, size: int, *, pinned: Iterable[Hashable] = ()) -> list[Hashable]:
        """Add a value, evicting least recently used unpinned entries while over budget; returns evicted keys.

        A single value larger than the budget is still kept (the task needs it)."""
        self._entries[key] = (value, size)
        self._entries.move_to_end(key)
        keep = {key, *pinned}
        evicted = []
        for old in list(self._entries):
            if self.total_bytes <= self.budget_bytes:
                break
            if old not in keep:
                self._entries.pop(old)
                evicted.append(old)
                _log.info("model cache: evicted %s to stay within %.1f GiB", old, self.budget_bytes / GIB)
        return evicted

    def reserve(self, size: int, *, pinned: Iterable[Hashable] = ()) -> list[Hashable]:
        """Evict unpinned entries until ``size`` more bytes fit (called before loading, to free memory first)."""
        keep = set(pinned)
        evicted = []
        for old in list(self._entries):
            if self.total_bytes + size <= self.budget_bytes:
                break
            if old not in keep:
                self._entries.pop(old)
                evicted.append(old)
        return evicted

    def pop(self, key: Hashable) -> Value | None:
        """Forget one entry (its memory is freed once nothing else references it)."""
        entry = self._entries.pop(key, None)
        return entry[0] if entry is not None else None

    def values(self) -> list[Value]:
        return [value for value, _ in self._entries.values()]

    def cached_keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())


def place_modules(modules: Iterable[torch.nn.Module | None], device: torch.device, policy: VramPolicy) -> None:
    """Put the modules a step is about to use where ``policy`` wants them (no-op off CUDA)."""
    if device.type != "cuda":
        return
    for module in modules:
        if module is None:
            continue
        if policy is VramPolicy.LOW:
            if not getattr(module, "_foci_sequential_offload", False):
                from accelerate import cpu_offload

                module.to("cpu")
                cpu_offload(module, execution_device=device)
                module._foci_sequential_offload = True  # type: ignore[attr-defined]
        else:
            module.to(device)


def offload_modules(modules: Iterable[torch.nn.Module | None], policy: VramPolicy) -> None:
    """Move modules not needed now back to system RAM under the ``normal`` policy."""
    if policy is not VramPolicy.NORMAL:
        return
    for module in modules:
        if module is not None and next(module.parameters(), torch.empty(0)).device.type == "cuda":
            module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
