"""A complete tiny models folder for offline use and tests (``foci dev make-models --tiny DIR``).

Every file is written in the layout of the real one, sized for the tiny checkpoint of :mod:`foci.dev.synthetic`
(whose UNet's first block has 64 channels instead of SDXL's 320), with deterministic values:

* ``checkpoints/tiny.safetensors`` — the tiny SDXL base checkpoint;
* ``inpaint/fooocus_inpaint_head.pth`` — ``{"head": (64, 5, 3, 3)}``, a pickle read with ``weights_only``;
* ``inpaint/inpaint.fooocus.patch``, ``inpaint_v25.fooocus.patch``, ``inpaint_v26.fooocus.patch`` — Fooocus's
  uint8-quantised UNet diffs: ``{"diffusion_model.<ldm name>": (uint8 tensor, min, max)}`` for every UNet tensor,
  each delta within ±0.01;
* ``upscale_models/fooocus_upscaler_s409985e5.bin`` — a 4× RRDBNet (8 features, growth 4, 2 blocks) in the old
  ESRGAN key layout with Fooocus's ``residual_block_`` names; its weights are a nearest-neighbour 4× upscale plus
  small noise, so its output looks like its input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from foci.dev.synthetic import checkpoint_layout, component_configs, write_checkpoint
from foci.files.folders import DEFAULT_SUBFOLDERS
from foci.imaging.upscaler import FOOOCUS_UPSCALER, RRDBConfig, RRDBNet
from foci.models.checkpoint import UNET_PREFIX

TINY_CHECKPOINT = "tiny.safetensors"
INPAINT_HEAD = "fooocus_inpaint_head.pth"
INPAINT_PATCHES = {"v1": "inpaint.fooocus.patch", "v2.5": "inpaint_v25.fooocus.patch",
                   "v2.6": "inpaint_v26.fooocus.patch"}
PATCH_RANGE = 0.01
TINY_UPSCALER = RRDBConfig(in_channels=3, out_channels=3, features=8, growth=4, blocks=2, upsamples=2, unshuffle=1)
UPSCALER_NOISE = 0.002


def _generator(name: str, seed: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _save(obj: object, path: Path) -> Path:
    """``torch.save`` through a temporary name, so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)
    return path


def tiny_unet_channels() -> int:
    """Width of the tiny UNet's first block (its ``conv_in`` output), which the inpaint head must match."""
    return int(component_configs("tiny", "base")["unet"]["block_out_channels"][0])


def write_inpaint_head(path: Path, *, channels: int, seed: int = 0) -> Path:
    """A Fooocus inpaint head file: ``{"head": float32 (channels, 5, 3, 3)}``."""
    weight = torch.randn(channels, 5, 3, 3, generator=_generator("head", seed)) / (5 * 9) ** 0.5
    return _save({"head": weight}, path)


def write_inpaint_patch(path: Path, *, seed: int) -> Path:
    """A ``.fooocus.patch`` for the tiny UNet: every UNet tensor as ``(uint8, min, max)`` with min/max ±0.01."""
    low, high = torch.tensor(-PATCH_RANGE), torch.tensor(PATCH_RANGE)
    patch = {}
    for key, shape in checkpoint_layout("tiny", "base").items():
        if key.startswith(UNET_PREFIX):
            name = "diffusion_model." + key.removeprefix(UNET_PREFIX)
            quantised = torch.randint(0, 256, shape, dtype=torch.uint8, generator=_generator(name, seed))
            patch[name] = (quantised, low.clone(), high.clone())
    return _save(patch, path)


def _nearest_upscaler_state(config: RRDBConfig, seed: int) -> dict[str, torch.Tensor]:
    """RRDBNet weights (Real-ESRGAN names) computing a nearest-neighbour upscale, plus small noise."""
    state = {key: torch.zeros_like(value) for key, value in RRDBNet(config).state_dict().items()}
    for name in ("conv_first", *(f"conv_up{i}" for i in range(1, config.upsamples + 1)), "conv_hr", "conv_last"):
        for channel in range(3):  # carry RGB through the centre taps (values stay ≥ 0, so leaky ReLU is identity)
            state[f"{name}.weight"][channel, channel, 1, 1] = 1.0
    for key, value in state.items():
        state[key] = value + UPSCALER_NOISE * torch.randn(value.shape, generator=_generator(key, seed))
    return state


def _fooocus_upscaler_layout(state: dict[str, torch.Tensor], config: RRDBConfig) -> dict[str, torch.Tensor]:
    """Real-ESRGAN names → the old ESRGAN layout with ``residual_block_`` (``model.1.sub.N.residual_block_k…``)."""
    tail = {f"conv_up{n}": 3 * n for n in range(1, config.upsamples + 1)}
    tail |= {"conv_hr": 3 * config.upsamples + 2, "conv_last": 3 * config.upsamples + 4}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "body":  # body.N.rdbK.convJ
            out[f"model.1.sub.{parts[1]}.residual_block_{parts[2][3:]}.{parts[3]}.0.{leaf}"] = value
        elif module == "conv_body":
            out[f"model.1.sub.{config.blocks}.{leaf}"] = value
        elif module == "conv_first":
            out[f"model.0.{leaf}"] = value
        else:
            out[f"model.{tail[module]}.{leaf}"] = value
    return out


def write_tiny_upscaler(path: Path, *, seed: int = 0) -> Path:
    """The tiny stand-in for ``fooocus_upscaler_s409985e5.bin`` (a torch pickle, as the real file)."""
    state = _nearest_upscaler_state(TINY_UPSCALER, seed)
    return _save(_fooocus_upscaler_layout(state, TINY_UPSCALER), path)


def write_tiny_models(folder: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the tiny models folder described in the module docstring under ``folder`` (the ``models`` root,
    Fooocus's subfolder names). Returns each written file by a short name."""
    root = Path(folder)
    inpaint = root / DEFAULT_SUBFOLDERS["inpaint"]
    written = {
        "checkpoint": write_checkpoint(root / DEFAULT_SUBFOLDERS["checkpoints"] / TINY_CHECKPOINT, size="tiny",
                                       kind="base", seed=seed),
        "inpaint_head": write_inpaint_head(inpaint / INPAINT_HEAD, channels=tiny_unet_channels(), seed=seed),
    }
    for index, (engine, name) in enumerate(INPAINT_PATCHES.items()):
        written[f"inpaint_patch_{engine}"] = write_inpaint_patch(inpaint / name, seed=seed + 1 + index)
    written["upscaler"] = write_tiny_upscaler(root / DEFAULT_SUBFOLDERS["upscale_models"] / FOOOCUS_UPSCALER,
                                              seed=seed)
    return written
