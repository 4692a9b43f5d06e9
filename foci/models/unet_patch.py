"""One interface for reversible changes to a UNet's forward pass (FreeU's hooks, SAG's attention recorder, …).

A ``UnetPatch`` installs itself with ``attach()`` and undoes exactly what it installed with ``detach()``; used as
a context manager it is attached for the ``with`` block. Subclasses implement only ``_install()``, which makes
its changes and returns the actions that undo them (see ``add_pre_hook`` and ``swap_attention_processor``). The
weights are never touched: a detached UNet behaves bit-exactly as before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Undo = Callable[[], None]
PatchT = TypeVar("PatchT", bound="UnetPatch")


class UnetPatch(ABC):
    """A reversible change to ``unet``'s forward pass; attach/detach are idempotent."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self._undo: list[Undo] | None = None

    @abstractmethod
    def _install(self) -> list[Undo]:
        """Make the change; return the actions that undo it (run in reverse order on ``detach()``)."""

    @property
    def attached(self) -> bool:
        """True between ``attach()`` and ``detach()``."""
        return self._undo is not None

    def attach(self) -> None:
        """Install the patch (no-op when already attached)."""
        if self._undo is None:
            self._undo = self._install()

    def detach(self) -> None:
        """Undo everything ``attach()`` installed (no-op when not attached)."""
        undo, self._undo = self._undo, None
        for action in reversed(undo or []):
            action()

    def __enter__(self: PatchT) -> PatchT:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def add_pre_hook(module: nn.Module, hook: Callable[..., Any]) -> Undo:
    """Register a forward pre-hook that also receives and may return the keyword arguments; returns its removal."""
    return module.register_forward_pre_hook(hook, with_kwargs=True).remove


def swap_attention_processor(attention: nn.Module, processor: object) -> Undo:
    """Give a diffusers ``Attention`` module another processor; returns the action restoring the original."""
    original = attention.processor
    attention.set_processor(processor)
    return lambda: attention.set_processor(original)
