"""VAE approximation for live previews (§2.20): a tiny conv net that maps a UNet-space latent to a rough RGB picture.

Fooocus ships it as ``xlvaeapp.pth`` (SDXL) in ``models/vae_approx``: a plain state dict with the keys
``conv1.weight``, ``conv1.bias`` … ``conv8.bias`` (channels 4→8→16→32→64→32→16→8→3, kernels 7, 5, then 3×3,
no padding of their own). The forward pass doubles the latent by nearest-neighbour upsampling, zero-pads it by 11 on
every side (exactly what the unpadded kernels eat: (7−1 + 5−1 + 6·(3−1)) / 2 = 11) and applies every conv followed by
a leaky ReLU with slope 0.1 — the last conv included. The result is roughly in −1…1 and twice the latent's size,
i.e. a quarter of the image's size.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): a pickle that would run code is refused.
The layer shapes come from the file's keys, and anything that is not such a conv chain is refused with
:class:`VaeApproxError`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

LATENT_CHANNELS = 4
RGB_CHANNELS = 3
LEAKY_SLOPE = 0.1
MAX_FILE_BYTES = 16 * 1024 * 1024  # the real file is ~210 kB; refuse anything checkpoint-sized
MAX_LAYERS = 32
MAX_CHANNELS = 1024
MAX_KERNEL = 15
_KEY = re.compile(r"conv(\d+)\.(weight|bias)")


class VaeApproxError(ValueError):
    """A VAE-approximation file that cannot be read safely or does not have the expected layout."""


class VaeApprox(nn.Module):
    """Nearest 2× upsample, zero padding, then ``conv1`` … ``convN`` each followed by a leaky ReLU (slope 0.1).

    ``layers`` lists ``(in_channels, out_channels, kernel)`` per conv; the default is Fooocus's SDXL layout. The
    padding is chosen so the output is exactly twice the input's height and width (11 for the default layout).
    """

    DEFAULT_LAYERS: tuple[tuple[int, int, int], ...] = (
        (4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3),
    )

    def __init__(self, layers: tuple[tuple[int, int, int], ...] = DEFAULT_LAYERS) -> None:
        super().__init__()
        _check_layers(layers)
        self.layers = tuple(layers)
        self.padding = sum(kernel - 1 for _, _, kernel in layers) // 2
        self._names: list[str] = []
        for index, (channels_in, channels_out, kernel) in enumerate(layers, start=1):
            name = f"conv{index}"  # the file's key names: conv1.weight, conv1.bias, …
            self.add_module(name, nn.Conv2d(channels_in, channels_out, kernel))
            self._names.append(name)

    @property
    def convs(self) -> list[nn.Conv2d]:
        """The convolutions in order."""
        return [getattr(self, name) for name in self._names]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, 4, h, w]`` latent → ``[B, 3, 2h, 2w]``, values roughly in −1…1."""
        if latent.ndim != 4 or latent.shape[1] != self.layers[0][0]:
            raise ValueError(f"VaeApprox needs a [B, {self.layers[0][0]}, h, w] latent, got {tuple(latent.shape)}")
        height, width = latent.shape[-2:]
        x = functional.interpolate(latent, size=(height * 2, width * 2), mode="nearest")
        x = functional.pad(x, (self.padding,) * 4)
        for conv in self.convs:
            x = functional.leaky_relu(conv(x), LEAKY_SLOPE)
        return x


def _check_layers(layers: tuple[tuple[int, int, int], ...]) -> None:
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise VaeApproxError(f"a VAE approximation needs 1 to {MAX_LAYERS} convolutions, got {len(layers)}")
    if layers[0][0] != LATENT_CHANNELS:
        raise VaeApproxError(f"the first convolution must take {LATENT_CHANNELS} latent channels, "
                             f"not {layers[0][0]}")
    if layers[-1][1] != RGB_CHANNELS:
        raise VaeApproxError(f"the last convolution must give {RGB_CHANNELS} RGB channels, not {layers[-1][1]}")
    for index, (channels_in, channels_out, kernel) in enumerate(layers, start=1):
        if not (0 < channels_in <= MAX_CHANNELS and 0 < channels_out <= MAX_CHANNELS and 0 < kernel <= MAX_KERNEL):
            raise VaeApproxError(f"conv{index}: unsupported shape {channels_in}→{channels_out}, kernel {kernel}")
        if index > 1 and layers[index - 2][1] != channels_in:
            raise VaeApproxError(f"conv{index} takes {channels_in} channels but conv{index - 1} gives "
                                 f"{layers[index - 2][1]}")
    if sum(kernel - 1 for _, _, kernel in layers) % 2:
        raise VaeApproxError("the kernel sizes do not allow an output of exactly twice the latent size")


def layers_from_state_dict(state: Mapping[str, object]) -> tuple[tuple[int, int, int], ...]:
    """The ``(in, out, kernel)`` of each conv described by a state dict with keys ``conv1.weight`` … ``convN.bias``.

    Raises :class:`VaeApproxError` for other keys, missing or non-consecutive layers and badly shaped tensors.
    """
    if not isinstance(state, Mapping) or not state:
        raise VaeApproxError(f"expected a non-empty state dict of tensors, got {type(state).__name__}")
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _KEY.fullmatch(str(key))
        if match is None:
            raise VaeApproxError(f"unexpected key {str(key)[:80]!r} (expected conv1.weight, conv1.bias, …)")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise VaeApproxError(f"{key} must be a floating-point tensor, got {type(value).__name__}"
                                 + (f" of {value.dtype}" if isinstance(value, torch.Tensor) else ""))
        found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    count = len(found)
    if sorted(found) != list(range(1, count + 1)):
        raise VaeApproxError(f"the convolutions must be numbered conv1 … conv{count} without gaps, "
                             f"found {', '.join(f'conv{i}' for i in sorted(found))}")
    layers: list[tuple[int, int, int]] = []
    for index in range(1, count + 1):
        weight, bias = found[index].get("weight"), found[index].get("bias")
        if weight is None or bias is None:
            raise VaeApproxError(f"conv{index} needs both a weight and a bias")
        if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
            raise VaeApproxError(f"conv{index}.weight must be [out, in, k, k], got {tuple(weight.shape)}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise VaeApproxError(f"conv{index}.bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
        layers.append((int(weight.shape[1]), int(weight.shape[0]), int(weight.shape[2])))
    result = tuple(layers)
    _check_layers(result)
    return result


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth``/``.pt`` (restricted unpickler: no code runs) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise VaeApproxError(f"VAE approximation file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise VaeApproxError(f"{path.name} is {size} bytes; a VAE approximation is far smaller "
                             f"(at most {MAX_FILE_BYTES} accepted) — is this the right file?")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise VaeApproxError(f"{path.name} is not a readable safetensors file: {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise VaeApproxError(f"{path.name} was refused: it is not a plain tensor file and loading it could run "
                             f"code{_unpickling_reason(error)}") from error
    except Exception as error:  # a file that is no torch file at all fails anywhere in the unpickler
        raise VaeApproxError(f"{path.name} is not a readable torch file: {type(error).__name__}: {error}") from error
    if not isinstance(state, Mapping):
        raise VaeApproxError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _unpickling_reason(error: BaseException) -> str:
    """The telling line of torch's weights-only refusal (which global it blocked), if there is one."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return f" ({line.strip()[:200]})"
    return ""


def load_vae_approx(path: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                    ) -> VaeApprox:
    """A :class:`VaeApprox` with the weights of ``path`` (shapes taken from the file), in eval mode, on ``device``.

    Raises :class:`VaeApproxError` when the file is unreadable, unsafe or not a VAE approximation.
    """
    state = read_state_dict(Path(path))
    model = VaeApprox(layers_from_state_dict(state))
    bad = [key for key, value in state.items() if not torch.isfinite(value).all()]
    if bad:
        raise VaeApproxError(f"{Path(path).name}: {bad[0]} contains NaN or infinite values")
    model.load_state_dict({key: value.to(torch.float32) for key, value in state.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
