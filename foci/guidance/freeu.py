"""FreeU V2 (§2.19) on a diffusers ``UNet2DConditionModel``, applied with forward pre-hooks.

Every resnet of an up block receives ``cat(h, skip)``. Where the backbone part ``h`` has
``4·model_channels`` channels (b1, s1) or ``2·model_channels`` (b2, s2), the first half of h's channels is
multiplied by ``(b − 1)·m + 1`` (m = per-sample min-max normalised channel mean of h) and the skip features
are low-frequency scaled by s in the Fourier domain. This is FreeU V2 keyed on channel counts like ComfyUI's
``FreeU_V2`` node — not diffusers' ``enable_freeu``, which implements V1. The UNet's weights are never
touched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foci.models.unet_patch import Undo, UnetPatch, add_pre_hook

FOURIER_THRESHOLD = 1


def fourier_filter(x: Tensor, *, threshold: int, scale: float) -> Tensor:
    """Scale the centred ``(2·threshold)²`` low-frequency square of each ``[H, W]`` plane by ``scale``.

    Computed in float32 and cast back to the input dtype.
    """
    freq = torch.fft.fftn(x.float(), dim=(-2, -1))
    freq = torch.fft.fftshift(freq, dim=(-2, -1))
    height, width = freq.shape[-2:]
    mask = torch.ones(freq.shape, device=x.device)
    c_row, c_col = height // 2, width // 2
    mask[..., c_row - threshold:c_row + threshold, c_col - threshold:c_col + threshold] = scale
    freq = freq * mask
    freq = torch.fft.ifftshift(freq, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def scale_backbone(h: Tensor, b: float) -> Tensor:
    """Multiply h's first half of channels by ``(b − 1)·m + 1``.

    m is the channel mean of h, min-max normalised over each sample's spatial positions.
    """
    hidden_mean = h.mean(1).unsqueeze(1)
    batch = hidden_mean.shape[0]
    hidden_max = hidden_mean.view(batch, -1).max(dim=-1, keepdim=True).values
    hidden_min = hidden_mean.view(batch, -1).min(dim=-1, keepdim=True).values
    hidden_mean = (hidden_mean - hidden_min[:, :, None, None]) / (hidden_max - hidden_min)[:, :, None, None]
    half = h.shape[1] // 2
    out = h.clone()
    out[:, :half] = h[:, :half] * ((b - 1) * hidden_mean + 1)
    return out


def _backbone_channels(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """Each up-block resnet with the channel count of the backbone part of its concatenated input."""
    result: list[tuple[nn.Module, int]] = []
    previous_out = int(unet.config.block_out_channels[-1])  # the mid block keeps the deepest width
    for block in unet.up_blocks:
        for resnet in block.resnets:
            result.append((resnet, previous_out))
            previous_out = int(resnet.out_channels)
    return result


class FreeU(UnetPatch):
    """FreeU V2 for a diffusers SDXL-style UNet, as a :class:`UnetPatch` (pre-hooks on the up-block resnets)."""

    def __init__(self, unet: nn.Module, *, b1: float = 1.01, b2: float = 1.02, s1: float = 0.99,
                 s2: float = 0.95) -> None:
        super().__init__(unet)
        model_channels = int(unet.config.block_out_channels[0])
        self.scales: dict[int, tuple[float, float]] = {
            model_channels * 4: (b1, s1),
            model_channels * 2: (b2, s2),
        }

    def _make_hook(self, backbone_channels: int, b: float, s: float):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("input_tensor"), ()
            h, skip = hidden[:, :backbone_channels], hidden[:, backbone_channels:]
            h = scale_backbone(h, b)
            skip = fourier_filter(skip, threshold=FOURIER_THRESHOLD, scale=s)
            return (torch.cat([h, skip], dim=1), *rest), kwargs

        return hook

    def _install(self) -> list[Undo]:
        """A pre-hook on every up-block resnet whose backbone width has scales."""
        return [add_pre_hook(resnet, self._make_hook(channels, *self.scales[channels]))
                for resnet, channels in _backbone_channels(self.unet) if channels in self.scales]
