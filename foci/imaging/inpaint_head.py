"""The Fooocus inpaint head (§2.12.7): ``fooocus_inpaint_head.pth`` holds one tensor ``head`` of shape
``(C, 5, 3, 3)`` — a bias-free 3×3 convolution from ``[latent mask, scaled inpaint latent]`` (1 + 4 channels) to the
UNet's first feature width ``C`` (320 for SDXL), applied with replicate padding. Its output is added to the UNet's
hidden state after input block 0 (diffusers: after ``conv_in``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HEAD_INPUT_CHANNELS = 5
HEAD_KEY = "head"


class InpaintHeadError(ValueError):
    """An inpaint head file that cannot be read or has the wrong shape."""


class InpaintHead(nn.Module):
    """The head convolution; ``channels`` is taken from the file, so the head of a small test UNet fits too."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.head = nn.Parameter(torch.zeros(channels, HEAD_INPUT_CHANNELS, 3, 3))

    @property
    def channels(self) -> int:
        return int(self.head.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.head.to(x))

    def features(self, latent_mask: torch.Tensor, inpaint_latent: torch.Tensor) -> torch.Tensor:
        """The feature added after input block 0: the head over ``[latent_mask, inpaint_latent]`` (the latent already
        scaled into the UNet's space)."""
        return self(torch.cat([latent_mask.to(inpaint_latent), inpaint_latent], dim=1))


def load_inpaint_head(path: str | Path, *, unet_channels: int | None = None) -> InpaintHead:
    """Read a head file with ``torch.load(weights_only=True)`` (or safetensors). :class:`InpaintHeadError`, one line,
    for an unreadable file, a missing ``head`` tensor, a shape other than ``(C, 5, 3, 3)``, or a ``C`` that differs
    from ``unet_channels`` when given."""
    path = Path(path)
    if not path.is_file():
        raise InpaintHeadError(f"{path}: inpaint head file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is one line
        detail = " ".join(str(exc).split())[:160]
        raise InpaintHeadError(f"{path}: not a readable inpaint head ({type(exc).__name__}: {detail})") from exc
    weight = state.get(HEAD_KEY) if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor):
        raise InpaintHeadError(f"{path}: not a Fooocus inpaint head (no '{HEAD_KEY}' tensor)")
    if weight.ndim != 4 or tuple(weight.shape[1:]) != (HEAD_INPUT_CHANNELS, 3, 3):
        raise InpaintHeadError(f"{path}: inpaint head of shape {tuple(weight.shape)}; expected (C, 5, 3, 3)")
    if unet_channels is not None and weight.shape[0] != unet_channels:
        raise InpaintHeadError(f"{path}: inpaint head for {weight.shape[0]} UNet channels, but this UNet's first "
                               f"block has {unet_channels}")
    head = InpaintHead(int(weight.shape[0]))
    with torch.no_grad():
        head.head.copy_(weight.float())
    return head.eval()
