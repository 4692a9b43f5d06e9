"""What a generation hands back: finished images, progress events, and the two ways it can end early."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from foci.records.metadata import ImageRecord


class GenerationError(RuntimeError):
    """A problem the user can act on (missing model, NaN output, …); its message is meant to be shown."""


class GenerationInterrupted(Exception):
    """Raised from the step callback when the caller asks to stop or skip."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


@dataclass
class ProgressEvent:
    """One sampling step of one image."""

    image_index: int
    image_count: int
    step: int
    total_steps: int
    percent: float
    denoised: torch.Tensor | None = None


@dataclass
class GeneratedImage:
    """One finished image with everything needed to reproduce it."""

    image: Image.Image
    seed: int
    record: ImageRecord
    path: Path | None
    latent: torch.Tensor | None  # final latent in VAE space, float32, CPU (None: made without sampling)
