"""ESRGAN-family super-resolution (§2.13): Fooocus's ``fooocus_upscaler_s409985e5.bin`` and any RRDBNet file a user
drops into ``models/upscale_models/``.

Files are read as safetensors or with ``torch.load(weights_only=True)``; Fooocus's ``residual_block_`` key names are
renamed to ``RDB`` first. When the ``spandrel`` package can be imported it builds the network (it knows many
architectures besides ESRGAN); otherwise Foci's own :class:`RRDBNet` does, for the three RRDBNet key layouts —
old ESRGAN (``model.0``, ``model.1.sub.N.RDBk.convj.0``), BasicSR (``RRDB_trunk``, ``trunk_conv``, ``upconv1``) and
Real-ESRGAN (``body.N.rdbk``, ``conv_body``, ``conv_up1``, with pixel-unshuffle for x2plus/x1 models) — with the
width, growth, block count, number of 2× stages and so the scale all read from the weights.

Inference runs on 512-pixel tiles overlapping by 32 (halved on out-of-memory, down to 128); the output is clamped
to 0…1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foci.imaging.tiles import tiled_scale

UPSCALE_TILE, UPSCALE_OVERLAP, UPSCALE_MIN_TILE = 512, 32, 128
FOOOCUS_UPSCALER = "fooocus_upscaler_s409985e5.bin"


class UpscalerError(ValueError):
    """An upscaler file that cannot be read or is not a super-resolution network Foci can run."""


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RRDBConfig:
    """Shape of an RRDBNet, as read from its weights."""

    in_channels: int
    out_channels: int
    features: int
    growth: int
    blocks: int
    upsamples: int  # nearest-2× + conv stages
    unshuffle: int  # pixel-unshuffle factor applied to the input (1, 2 or 4)

    @property
    def scale(self) -> int:
        return 2**self.upsamples // self.unshuffle


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convolutions, each seeing the block input and all earlier outputs; residual scaled by 0.2."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", nn.Conv2d(features + (index - 1) * growth, growth, 3, 1, 1))
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for index in range(1, 5):
            conv = getattr(self, f"conv{index}")
            outputs.append(F.leaky_relu(conv(torch.cat(outputs, 1)), 0.2))
        return self.conv5(torch.cat(outputs, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Three residual dense blocks in a residual (scaled by 0.2)."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator, parameter names as Real-ESRGAN names them."""

    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        self.conv_first = nn.Conv2d(config.in_channels, config.features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(config.features, config.growth) for _ in range(config.blocks)))
        self.conv_body = nn.Conv2d(config.features, config.features, 3, 1, 1)
        for index in range(1, config.upsamples + 1):
            setattr(self, f"conv_up{index}", nn.Conv2d(config.features, config.features, 3, 1, 1))
        self.conv_hr = nn.Conv2d(config.features, config.features, 3, 1, 1)
        self.conv_last = nn.Conv2d(config.features, config.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        factor = self.config.unshuffle
        if factor > 1:
            x = F.pad(x, (0, -width % factor, 0, -height % factor), mode="replicate")
            x = F.pixel_unshuffle(x, factor)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for index in range(1, self.config.upsamples + 1):
            upsampled = F.interpolate(features, scale_factor=2, mode="nearest")
            features = F.leaky_relu(getattr(self, f"conv_up{index}")(upsampled), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))
        return out[..., : height * self.config.scale, : width * self.config.scale]


# ----------------------------------------------------------------------------------------------------
# Reading files and key layouts
# ----------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file (safetensors, or a pickle read with ``weights_only=True``), unwrapped from
    ``params_ema`` / ``params`` / ``state_dict`` and a ``module.`` prefix, with ``residual_block_`` renamed ``RDB``."""
    path = Path(path)
    if not path.is_file():
        raise UpscalerError(f"{path}: upscaler file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a weights-only pickle: one line, never a traceback
        detail = " ".join(str(exc).split())[:160]
        raise UpscalerError(f"{path}: not a readable upscaler file ({type(exc).__name__}: {detail})") from exc
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UpscalerError(f"{path}: holds no tensors (not an upscaler file)")
    state = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            state[str(key).removeprefix("module.").replace("residual_block_", "RDB")] = value
    return state


_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_BASICSR_BLOCK = re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_BASICSR_NAMES = {"trunk_conv": "conv_body", "upconv1": "conv_up1", "upconv2": "conv_up2", "upconv3": "conv_up3",
                  "HRconv": "conv_hr", "conv_first": "conv_first", "conv_last": "conv_last"}


def _from_old_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ESRGAN: model.0 first conv; model.1.sub.* the trunk; then (upsample, conv, lrelu)* , HR conv, last conv."""
    out: dict[str, torch.Tensor] = {}
    trunk_index = max((int(m.group(1)) for m in map(_OLD_BLOCK.match, state) if m), default=-1) + 1
    tail = sorted({int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.(weight|bias)$", k)} - {0})
    if len(tail) < 2:
        raise UpscalerError("old-style ESRGAN weights without their HR and last convolutions")
    names = {index: f"conv_up{n}" for n, index in enumerate(tail[:-2], 1)}
    names |= {tail[-2]: "conv_hr", tail[-1]: "conv_last"}
    for key, value in state.items():
        if match := _OLD_BLOCK.match(key):
            block, rdb, conv, leaf = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{leaf}"] = value
        elif key.startswith(f"model.1.sub.{trunk_index}."):
            out["conv_body." + key.rsplit(".", 1)[1]] = value
        elif re.match(r"model\.\d+\.(weight|bias)$", key):
            index, leaf = int(key.split(".")[1]), key.rsplit(".", 1)[1]
            out[f"{names[index] if index else 'conv_first'}.{leaf}"] = value
        else:
            out[key] = value  # unknown: reported by the strict load
    return out


def _from_basicsr_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if match := _BASICSR_BLOCK.match(key):
            block, rdb, conv, leaf = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{leaf}"] = value
        else:
            module, _, leaf = key.rpartition(".")
            out[f"{_BASICSR_NAMES.get(module, module)}.{leaf}"] = value
    return out


def to_realesrgan_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any of the three RRDBNet key layouts, renamed to Real-ESRGAN's; other files raise :class:`UpscalerError`."""
    if "body.0.rdb1.conv1.weight" in state and "conv_first.weight" in state:
        return dict(state)
    if "RRDB_trunk.0.RDB1.conv1.weight" in state:
        return _from_basicsr_layout(state)
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return _from_old_layout(state)
    raise UpscalerError("not an ESRGAN-family (RRDBNet) upscaler: none of its key layouts "
                        "(model.1.sub.0.RDB1…, RRDB_trunk.0.RDB1…, body.0.rdb1…) is present")


def rrdb_config(state: Mapping[str, torch.Tensor]) -> RRDBConfig:
    """The network shape from Real-ESRGAN-layout weights."""
    first, last = state["conv_first.weight"], state.get("conv_last.weight")
    if last is None or first.ndim != 4 or last.ndim != 4:
        raise UpscalerError("RRDBNet weights without 4-D conv_first/conv_last convolutions")
    in_channels, out_channels = int(first.shape[1]), int(last.shape[0])
    ratio = in_channels / out_channels
    unshuffle = int(round(math.sqrt(ratio)))
    if unshuffle not in (1, 2, 4) or unshuffle * unshuffle * out_channels != in_channels:
        raise UpscalerError(f"RRDBNet with {in_channels} input and {out_channels} output channels is not supported")
    blocks = len({key.split(".")[1] for key in state if key.startswith("body.")})
    upsamples = len({key.split(".")[0] for key in state if re.match(r"conv_up\d+\.weight$", key)})
    return RRDBConfig(in_channels, out_channels, int(first.shape[0]), int(state["body.0.rdb1.conv1.weight"].shape[0]),
                      blocks, upsamples, unshuffle)


def build_rrdbnet(state: Mapping[str, torch.Tensor]) -> RRDBNet:
    """An :class:`RRDBNet` loaded (strictly) from weights in any RRDBNet layout."""
    canonical = to_realesrgan_layout(state)
    network = RRDBNet(rrdb_config(canonical))
    try:
        network.load_state_dict(canonical, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UpscalerError(f"RRDBNet weights that do not fit the network ({first_line[:200]})") from None
    return network.eval()


def _build_with_spandrel(state: dict[str, torch.Tensor]) -> tuple[nn.Module, int] | None:
    """``(network, scale)`` from spandrel when it can be imported, else None."""
    try:
        import spandrel
    except ImportError:
        return None
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as exc:  # spandrel's own errors for unknown architectures
        raise UpscalerError(f"not a super-resolution network spandrel knows ({type(exc).__name__})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"a {type(descriptor).__name__}, not a single-image super-resolution network")
    return descriptor.model.eval(), int(descriptor.scale)


# ----------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch running out of (GPU or CPU) memory."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("out of memory", "can't allocate memory", "not enough memory"))


@dataclass(frozen=True)
class Upscaler:
    """A loaded super-resolution network and its integer scale."""

    network: nn.Module
    scale: int
    name: str

    def upscale_tensor(
        self,
        pixels: torch.Tensor,
        *,
        tile: int = UPSCALE_TILE,
        overlap: int = UPSCALE_OVERLAP,
        min_tile: int = UPSCALE_MIN_TILE,
    ) -> torch.Tensor:
        """``(B, 3, H, W)`` in 0…1 → ``(B, 3, H·scale, W·scale)`` clamped to 0…1, on tiles; on out-of-memory the
        tile is halved and the whole image redone, until a tile below ``min_tile`` would be needed."""
        parameter = next(self.network.parameters())
        pixels = pixels.to(parameter.device, parameter.dtype)
        while True:
            try:
                with torch.inference_mode():
                    result = tiled_scale(pixels, self.network, tile_height=tile, tile_width=tile, overlap=overlap,
                                         scale=self.scale, out_channels=3)
                return result.clamp(0.0, 1.0)
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc) or tile // 2 < min_tile:
                    raise
                tile //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def upscale(self, image: np.ndarray, **tiling: int) -> np.ndarray:
        """A uint8 ``(H, W, 3)`` image super-resolved; back to uint8 as Fooocus does (×255, clipped, truncated)."""
        pixels = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        result = self.upscale_tensor(pixels, **tiling)[0].permute(1, 2, 0).float().cpu().numpy()
        return np.clip(255.0 * result, 0, 255).astype(np.uint8)


def load_upscaler(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  use_spandrel: bool = True) -> Upscaler:
    """Load an upscaler file (see the module docstring); :class:`UpscalerError` names the file and the problem."""
    path = Path(path)
    state = read_state_dict(path)
    try:
        built = _build_with_spandrel(state) if use_spandrel else None
        if built is None:
            network = build_rrdbnet(state)
            built = (network, network.config.scale)
    except UpscalerError as exc:
        raise UpscalerError(f"{path}: {exc}") from None
    network, scale = built
    return Upscaler(network.to(device=device, dtype=dtype), scale, path.name)
