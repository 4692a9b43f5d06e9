"""Foci: an offline SDXL image generator that reproduces Fooocus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Engine", "GenerationTask", "__version__"]

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.task import GenerationTask


def __getattr__(name: str) -> Any:
    """Import the heavy parts (torch, diffusers) only when they are used."""
    if name == "Engine":
        from foci.engine.engine import Engine

        return Engine
    if name == "GenerationTask":
        from foci.task import GenerationTask

        return GenerationTask
    raise AttributeError(name)
