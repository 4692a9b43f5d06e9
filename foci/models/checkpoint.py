"""Load SDXL checkpoints (single file or diffusers folder) into diffusers/transformers modules, offline.

Detection works from tensor names and shapes only: the shipped SDXL configs (``foci/models/configs``)
are the template, and everything the shapes determine (channels, depths, widths, ...) is read from the
file. A real SDXL file therefore yields exactly the shipped config and a tiny synthetic file its tiny
config, through the same code path.
Nothing is ever fetched from a hub: conversion uses diffusers' single-file key maps with these local configs.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from foci.models.latent import PLAYGROUND_V25_LATENT, SDXL_LATENT, LatentFormat
from foci.models.tensor_guard import TensorSizeError, check_state_dict

CONFIG_ROOT = Path(__file__).parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_BASE_PREFIX = "conditioner.embedders.1.model."
CLIP_G_REFINER_PREFIX = "conditioner.embedders.0.model."
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_HEAD_DIM = 64
CLIP_HEAD_DIM = 64
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

ModelKind = Literal["sdxl_base", "sdxl_refiner"]
Prediction = Literal["eps", "v", "edm"]
Shapes = dict[str, tuple[int, ...]]


class CheckpointError(ValueError):
    """A model file that cannot be used, with a message naming the file and what was found."""


class CorruptFileError(CheckpointError):
    """The file is damaged (truncated, bad header, unreadable data), as opposed to a readable non-SDXL file."""


@dataclass
class ArchitectureInfo:
    """What a checkpoint is, plus the diffusers/transformers configs derived from its tensor shapes."""

    kind: ModelKind
    prediction: Prediction
    latent_format: LatentFormat
    unet_config: dict[str, Any]
    vae_config: dict[str, Any] | None
    text_encoder_config: dict[str, Any] | None
    text_encoder_2_config: dict[str, Any]


@dataclass
class SDXLComponents:
    """Loaded modules of one SDXL checkpoint (refiners have no ``text_encoder``)."""

    info: ArchitectureInfo
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel | None
    text_encoder_2: CLIPTextModelWithProjection | None
    source: Path


def load_shipped_config(kind: ModelKind, component: str) -> dict[str, Any]:
    """The shipped diffusers/transformers config of SDXL base/refiner 1.0 for ``component`` (e.g. "unet")."""
    path = CONFIG_ROOT / kind / component / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {kind}/{component}")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a model file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header, checking that the data section is complete."""
    _check_file(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptFileError(
                f"{path}: not a valid safetensors file (header length {header_len} for a {size}-byte file)"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a valid safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    data_size = size - 8 - header_len
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(dim) for dim in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: corrupt safetensors header entry for {name!r}") from exc
        itemsize = _DTYPE_BYTES.get(dtype)
        if end < begin or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise CorruptFileError(
                f"{path}: corrupt safetensors header: tensor {name!r} has inconsistent size"
            )
        data_end = max(data_end, end)
    if data_end > data_size:
        raise CorruptFileError(
            f"{path}: file is truncated ({data_size} bytes of tensor data, header describes {data_end})"
        )
    if data_end < data_size:
        raise CorruptFileError(
            f"{path}: corrupt safetensors file ({data_size - data_end} unexpected trailing bytes)"
        )
    return header


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors (``weights_only``); unwraps a top-level ``state_dict``."""
    _check_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        detail = " ".join(detail.split(" Please use")[0].split())
        if "global" in detail.lower():
            reason = "it references Python objects that could run code"
        else:
            reason = "it is not a plain PyTorch weights pickle"
        raise CorruptFileError(f"{path}: not loaded: {reason} ({detail[:160]})") from exc
    except Exception as exc:  # any failure to parse the file is reported as a bad checkpoint
        raise CorruptFileError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise CorruptFileError(f"{path}: PyTorch file holds a {type(loaded).__name__}, not a state dict")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CorruptFileError(f"{path}: PyTorch file holds no tensors")
    try:
        check_state_dict(tensors)
    except TensorSizeError as error:
        raise CorruptFileError(f"{path}: {error}") from None
    return tensors


def _file_kind(path: Path) -> Literal["safetensors", "pickle"]:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    raise CorruptFileError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; "
        f"expected one of {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def read_tensor_shapes(path: str | Path, file_format: Literal["safetensors", "pickle"] | None = None) -> Shapes:
    """Tensor names → shapes of a model file (only the header is read for safetensors).

    The format follows the file name's suffix unless ``file_format`` names it (e.g. for a ``.part`` download).
    """
    path = Path(path)
    _check_file(path)
    if (file_format or _file_kind(path)) == "safetensors":
        header = _read_safetensors_header(path)
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in _torch_load(path).items()}


def _read_tensors(path: Path, wanted: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a file, or only those whose names start with one of ``wanted``."""
    if _file_kind(path) == "pickle":
        tensors = _torch_load(path)
        return {k: v for k, v in tensors.items() if wanted is None or k.startswith(wanted)}
    _read_safetensors_header(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if wanted is None or k.startswith(wanted)}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types from Rust
        raise CorruptFileError(f"{path}: could not read tensors ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------------------
# Detection and config derivation
# ----------------------------------------------------------------------------------------------------


def _need(shapes: Shapes, key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{source}: incomplete SDXL checkpoint, tensor {key!r} is missing")
    return shapes[key]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) over all keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _unsupported_family(shapes: Shapes) -> str | None:
    """A human name for known non-SDXL layouts, or None."""
    keys = list(shapes)
    if _has_prefix(shapes, "cond_stage_model.transformer."):
        return "a Stable Diffusion 1.x checkpoint"
    if _has_prefix(shapes, "cond_stage_model.model."):
        return "a Stable Diffusion 2.x checkpoint"
    if any("double_blocks." in k or "single_blocks." in k for k in keys):
        return "a Flux checkpoint"
    if any("joint_blocks." in k for k in keys) or _has_prefix(shapes, "text_encoders."):
        return "a Stable Diffusion 3 checkpoint"
    if any(".lora_down." in k or ".lora_A." in k or k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "a LoRA, not a checkpoint"
    vae_like = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    if keys and all(k.startswith(vae_like) for k in keys):
        return "a VAE file, not a full checkpoint (use it as a VAE override)"
    return None


def _attention_depth(shapes: Shapes, block_prefix: str) -> int:
    return len(_indices(shapes, re.escape(block_prefix) + r"\.1\.transformer_blocks\.(\d+)\."))


def _derive_unet_config(
    shapes: Shapes, template: dict[str, Any], pooled_dim: int, time_ids: int, source: str
) -> dict[str, Any]:
    """The UNet2DConditionModel config that the sgm-layout UNet tensors imply."""
    p = UNET_PREFIX
    conv_in = _need(shapes, p + "input_blocks.0.0.weight", source)
    conv_out = _need(shapes, p + "out.2.weight", source)
    adm = _need(shapes, p + "label_emb.0.0.weight", source)
    input_ids = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    downsamplers = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight")
    last_input = input_ids[-1] if input_ids else 0
    layers = downsamplers[0] - 1 if downsamplers else last_input
    if layers < 1 or (last_input + 1) % (layers + 1):
        raise CheckpointError(f"{source}: UNet input blocks do not follow the SDXL layout")
    levels = (last_input + 1) // (layers + 1)
    channels: list[int] = []
    attention_levels: list[bool] = []
    depths: list[int | None] = []
    cross_dims: set[int] = set()
    linear_proj: set[bool] = set()
    for level in range(levels):
        first = f"{p}input_blocks.{1 + level * (layers + 1)}"
        channels.append(_need(shapes, first + ".0.out_layers.3.weight", source)[0])
        depth = _attention_depth(shapes, first)
        attention_levels.append(depth > 0)
        depths.append(depth or None)
        if depth:
            cross_dims.add(_need(shapes, first + ".1.transformer_blocks.0.attn2.to_k.weight", source)[1])
            linear_proj.add(len(_need(shapes, first + ".1.proj_in.weight", source)) == 2)
    mid_depth = _attention_depth(shapes, p + "middle_block")
    if mid_depth == 0 or not cross_dims:
        raise CheckpointError(f"{source}: UNet has no cross-attention where SDXL has it")
    if len(cross_dims) > 1 or len(linear_proj) > 1:
        raise CheckpointError(f"{source}: UNet mixes cross-attention widths {sorted(cross_dims)}")
    if depths[-1] is not None and depths[-1] != mid_depth:
        raise CheckpointError(f"{source}: UNet middle block depth {mid_depth} differs from the last level's")
    bad = [c for c in channels if c % UNET_HEAD_DIM]
    if bad:
        raise CheckpointError(
            f"{source}: UNet channels {bad} are not multiples of {UNET_HEAD_DIM} (SDXL head size)"
        )

    template_depth = template["transformer_layers_per_block"]
    filled: list[int] = []
    for level, depth in enumerate(depths):
        if depth is not None:
            filled.append(depth)
        elif level == levels - 1 or isinstance(template_depth, int):
            filled.append(mid_depth)  # diffusers gives the middle block the last level's depth
        elif isinstance(template_depth, list) and len(template_depth) == levels:
            filled.append(int(template_depth[level]))
        else:
            filled.append(1)
    layers_per_block: int | list[int] = filled
    if isinstance(template_depth, int) and len(set(filled)) == 1:
        layers_per_block = filled[0]

    adm_in = adm[1]
    extra = adm_in - pooled_dim
    if extra <= 0 or extra % time_ids:
        raise CheckpointError(
            f"{source}: UNet size-conditioning input {adm_in} does not fit pooled width {pooled_dim} "
            f"plus {time_ids} time ids"
        )
    config = dict(template)
    config.update(
        in_channels=conv_in[1],
        out_channels=conv_out[0],
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)],
        attention_head_dim=[c // UNET_HEAD_DIM for c in channels],
        transformer_layers_per_block=layers_per_block,
        cross_attention_dim=cross_dims.pop(),
        use_linear_projection=linear_proj.pop(),
        addition_time_embed_dim=extra // time_ids,
        projection_class_embeddings_input_dim=adm_in,
    )
    return config


def _derive_vae_config(shapes: Shapes, prefix: str, template: dict[str, Any], source: str) -> dict[str, Any]:
    """AutoencoderKL config from sgm-layout (``encoder.down.i.block.j``) VAE tensors under ``prefix``."""
    levels = _indices(shapes, re.escape(prefix) + r"encoder\.down\.(\d+)\.")
    blocks = _indices(shapes, re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\.")
    if not levels or not blocks:
        raise CheckpointError(f"{source}: VAE encoder blocks not found")
    channels = [_need(shapes, f"{prefix}encoder.down.{i}.block.0.conv2.weight", source)[0] for i in levels]
    return _vae_config(
        template,
        channels,
        len(blocks),
        _need(shapes, prefix + "post_quant_conv.weight", source)[0],
        _need(shapes, prefix + "encoder.conv_in.weight", source)[1],
        _need(shapes, prefix + "decoder.conv_out.weight", source)[0],
    )


def _derive_diffusers_vae_config(shapes: Shapes, template: dict[str, Any], source: str) -> dict[str, Any]:
    """AutoencoderKL config from diffusers-layout (``encoder.down_blocks.i.resnets.j``) VAE tensors."""
    levels = _indices(shapes, r"encoder\.down_blocks\.(\d+)\.")
    blocks = _indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    channels = [_need(shapes, f"encoder.down_blocks.{i}.resnets.0.conv2.weight", source)[0] for i in levels]
    return _vae_config(
        template,
        channels,
        len(blocks),
        _need(shapes, "post_quant_conv.weight", source)[0],
        _need(shapes, "encoder.conv_in.weight", source)[1],
        _need(shapes, "decoder.conv_out.weight", source)[0],
    )


def _vae_config(
    template: dict[str, Any], channels: list[int], layers: int, latent: int, in_ch: int, out_ch: int
) -> dict[str, Any]:
    config = dict(template)
    config.update(
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        latent_channels=latent,
        in_channels=in_ch,
        out_channels=out_ch,
    )
    return config


def _clip_config(
    template: dict[str, Any],
    hidden: int,
    vocab: int,
    positions: int,
    layers: int,
    intermediate: int,
    projection: int,
    source: str,
) -> dict[str, Any]:
    if hidden % CLIP_HEAD_DIM:
        raise CheckpointError(f"{source}: text encoder width {hidden} is not a multiple of {CLIP_HEAD_DIM}")
    config = dict(template)
    config.update(
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=positions,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=hidden // CLIP_HEAD_DIM,
        projection_dim=projection,
    )
    return config


def _derive_clip_l_config(shapes: Shapes, template: dict[str, Any], source: str) -> dict[str, Any]:
    """CLIPTextConfig dict from HF-layout CLIP-L tensors (with or without the ``text_model.`` level)."""
    inner = CLIP_L_PREFIX + ("text_model." if _has_prefix(shapes, CLIP_L_PREFIX + "text_model.") else "")
    vocab, hidden = _need(shapes, inner + "embeddings.token_embedding.weight", source)
    positions = _need(shapes, inner + "embeddings.position_embedding.weight", source)[0]
    layers = len(_indices(shapes, re.escape(inner) + r"encoder\.layers\.(\d+)\."))
    intermediate = _need(shapes, inner + "encoder.layers.0.mlp.fc1.weight", source)[0]
    return _clip_config(template, hidden, vocab, positions, layers, intermediate, hidden, source)


def _derive_clip_g_config(
    shapes: Shapes, prefix: str, template: dict[str, Any], source: str
) -> dict[str, Any]:
    """CLIPTextConfig dict from OpenCLIP tensors (fused ``in_proj``, ``text_projection`` [width, proj])."""
    vocab, hidden = _need(shapes, prefix + "token_embedding.weight", source)
    positions = _need(shapes, prefix + "positional_embedding", source)[0]
    projection = _need(shapes, prefix + "text_projection", source)
    layers = len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    intermediate = _need(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight", source)[0]
    if projection[0] != hidden:
        raise CheckpointError(
            f"{source}: OpenCLIP text_projection {projection} does not match width {hidden}"
        )
    return _clip_config(template, hidden, vocab, positions, layers, intermediate, projection[1], source)


def detect_architecture(shapes: Mapping[str, tuple[int, ...]], source: str) -> ArchitectureInfo:
    """Identify an SDXL base/refiner checkpoint from tensor names and shapes and derive its configs."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    family = _unsupported_family(shapes)
    if family is not None:
        raise CheckpointError(f"{source}: is {family}; Foci needs an SDXL checkpoint")
    if not _has_prefix(shapes, UNET_PREFIX):
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise CheckpointError(f"{source}: not an SDXL checkpoint (unknown layout; first tensors: {sample})")
    has_l = _has_prefix(shapes, CLIP_L_PREFIX)
    has_g_base = _has_prefix(shapes, CLIP_G_BASE_PREFIX)
    has_g_refiner = _has_prefix(shapes, CLIP_G_REFINER_PREFIX)
    if has_l and has_g_base:
        kind: ModelKind = "sdxl_base"
        g_prefix, time_ids = CLIP_G_BASE_PREFIX, 6
    elif has_g_refiner and not has_l and not has_g_base:
        kind, g_prefix, time_ids = "sdxl_refiner", CLIP_G_REFINER_PREFIX, 5
    elif not _has_prefix(shapes, "conditioner."):
        raise CheckpointError(f"{source}: has a UNet but no text encoders; Foci needs a full SDXL checkpoint")
    else:
        raise CheckpointError(f"{source}: has an unknown conditioner layout; Foci needs an SDXL checkpoint")

    te2_config = _derive_clip_g_config(shapes, g_prefix, load_shipped_config(kind, "text_encoder_2"), source)
    te1_config = None
    context_dim = te2_config["hidden_size"]
    if kind == "sdxl_base":
        te1_config = _derive_clip_l_config(shapes, load_shipped_config(kind, "text_encoder"), source)
        context_dim += te1_config["hidden_size"]
    unet_config = _derive_unet_config(
        shapes, load_shipped_config(kind, "unet"), te2_config["projection_dim"], time_ids, source
    )
    if unet_config["cross_attention_dim"] != context_dim:
        raise CheckpointError(
            f"{source}: UNet cross-attention width {unet_config['cross_attention_dim']} does not match "
            f"the text encoders ({context_dim})"
        )
    if "edm_mean" in shapes and "edm_std" in shapes:
        prediction: Prediction = "edm"
        latent_format = PLAYGROUND_V25_LATENT
    else:
        prediction = "v" if "v_pred" in shapes else "eps"
        latent_format = SDXL_LATENT
    vae_config = None
    if _has_prefix(shapes, VAE_PREFIX):
        vae_config = _derive_vae_config(shapes, VAE_PREFIX, load_shipped_config(kind, "vae"), source)
        vae_config["scaling_factor"] = latent_format.scale_factor
    return ArchitectureInfo(
        kind=kind,
        prediction=prediction,
        latent_format=latent_format,
        unet_config=unet_config,
        vae_config=vae_config,
        text_encoder_config=te1_config,
        text_encoder_2_config=te2_config,
    )


# ----------------------------------------------------------------------------------------------------
# Conversion and module building
# ----------------------------------------------------------------------------------------------------


def _sub_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if k.startswith(prefix)}


def convert_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], info: ArchitectureInfo
) -> dict[str, dict[str, torch.Tensor]]:
    """Split an sgm-layout state dict into diffusers/transformers state dicts per component.

    Returns keys ``unet``, ``vae`` (if present), ``text_encoder`` (base only) and ``text_encoder_2``. Text
    encoder keys carry the ``text_model.`` level; :func:`build_module` adapts them to the installed
    transformers.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    converted = {"unet": convert_ldm_unet_checkpoint(_sub_dict(state_dict, UNET_PREFIX), info.unet_config)}
    if info.vae_config is not None:
        converted["vae"] = convert_ldm_vae_checkpoint(_sub_dict(state_dict, VAE_PREFIX), info.vae_config)
    if info.kind == "sdxl_base":
        converted["text_encoder"] = convert_ldm_clip_checkpoint(_sub_dict(state_dict, CLIP_L_PREFIX))
        g_prefix = CLIP_G_BASE_PREFIX
    else:
        g_prefix = CLIP_G_REFINER_PREFIX
    projection_config = CLIPTextConfig(**_clip_kwargs(info.text_encoder_2_config))
    converted["text_encoder_2"] = convert_open_clip_checkpoint(
        _ConfigHolder(projection_config), _sub_dict(state_dict, g_prefix), prefix=g_prefix
    )
    return converted


@dataclass
class _ConfigHolder:
    """Stands in for the model argument of ``convert_open_clip_checkpoint``, which only reads ``.config``."""

    config: CLIPTextConfig


def _clip_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in config.items() if k not in ("architectures", "model_type") and not k.startswith("_")
    }


def _fit_keys(state_dict: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Add or drop the ``text_model.`` level so keys match the installed transformers' module layout."""
    fitted = {}
    for key, value in state_dict.items():
        candidates = (key, key.removeprefix("text_model."), "text_model." + key)
        target = next((c for c in candidates if c in model_keys), key)
        fitted[target] = value
    return fitted


def _summarise(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def build_module(
    module_cls: type,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Build ``module_cls`` on the meta device and assign ``state_dict`` (strict; no random init).

    Non-persistent buffers (CLIP ``position_ids``) are created normally; file ``position_ids`` are ignored.
    Missing, unexpected or mis-shaped tensors raise :class:`CheckpointError`.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        if module_cls in (CLIPTextModel, CLIPTextModelWithProjection):
            module = module_cls(CLIPTextConfig(**_clip_kwargs(config)))
        else:
            module = module_cls.from_config(dict(config))
    expected = module.state_dict()
    fitted = _fit_keys(state_dict, set(expected))
    fitted = {k: v for k, v in fitted.items() if not k.endswith("position_ids") or k in expected}
    missing = sorted(set(expected) - set(fitted))
    unexpected = sorted(set(fitted) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_summarise(unexpected)})")
        raise CheckpointError(f"{source}: {what} tensors do not match the architecture: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(fitted[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(fitted[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"{source}: {what} tensor shapes do not match: {_summarise(wrong)}")
    target = torch.device(device)
    cast = {
        k: v.to(device=target, dtype=dtype) if v.is_floating_point() else v.to(target)
        for k, v in fitted.items()
    }
    module.load_state_dict(cast, strict=True, assign=True)
    if target.type != "meta":
        module.to(target)
    module.eval()
    module.requires_grad_(False)
    return module


def components_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    skip_vae: bool = False,
) -> SDXLComponents:
    """Detect, convert and build all components from an sgm-layout state dict (tensors may live on meta)."""
    name = str(source)
    info = detect_architecture({k: tuple(v.shape) for k, v in state_dict.items()}, name)
    converted = convert_to_diffusers(state_dict, info)
    options = {"source": name, "device": device, "dtype": dtype}
    unet = build_module(UNet2DConditionModel, info.unet_config, converted["unet"], what="UNet", **options)
    vae = None
    if info.vae_config is not None and not skip_vae:
        vae = build_module(AutoencoderKL, info.vae_config, converted["vae"], what="VAE", **options)
    text_encoder = None
    if info.text_encoder_config is not None:
        text_encoder = build_module(
            CLIPTextModel,
            info.text_encoder_config,
            converted["text_encoder"],
            what="CLIP-L text encoder",
            **options,
        )
    text_encoder_2 = build_module(
        CLIPTextModelWithProjection,
        info.text_encoder_2_config,
        converted["text_encoder_2"],
        what="CLIP-G text encoder",
        **options,
    )
    return SDXLComponents(
        info=info,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        source=Path(source),
    )


_WANTED_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "conditioner.embedders.", "edm_mean", "edm_std", "v_pred")


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_path: str | Path | None = None,
) -> SDXLComponents:
    """Load an SDXL base or refiner checkpoint (single file or diffusers folder) without network access.

    ``vae_path`` replaces the checkpoint's VAE with a separate VAE file or folder.
    """
    path = Path(path)
    if path.is_dir():
        components = _load_diffusers_folder(path, device=device, dtype=dtype, skip_vae=vae_path is not None)
    else:
        _check_file(path)
        if _file_kind(path) == "safetensors":
            detect_architecture(read_tensor_shapes(path), str(path))  # fail fast, before reading tensor data
        tensors = _read_tensors(path, _WANTED_PREFIXES)
        components = components_from_state_dict(
            tensors, path, device=device, dtype=dtype, skip_vae=vae_path is not None
        )
    if vae_path is not None:
        components.vae = load_vae(vae_path, device=device, dtype=dtype)
    return components


def load_vae(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """Load a standalone VAE: sgm layout (``encoder.down.*``, optionally ``first_stage_model.``-prefixed),
    diffusers-layout keys, or a diffusers VAE folder."""
    path = Path(path)
    template = load_shipped_config("sdxl_base", "vae")
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        return _from_pretrained(AutoencoderKL, folder, None, device=device, dtype=dtype)
    name = str(path)
    shapes = read_tensor_shapes(path)
    family = _unsupported_family(shapes)
    if family is not None and "VAE" not in family:  # e.g. an SD1.x checkpoint: its VAE is not SDXL's latent space
        raise CheckpointError(f"{name}: is {family}; expected a VAE file for SDXL")
    prefix = VAE_PREFIX if _has_prefix(shapes, VAE_PREFIX) else ""
    if _has_prefix(shapes, prefix + "encoder.down."):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        config = _derive_vae_config(shapes, prefix, template, name)
        tensors = _read_tensors(path, (prefix,) if prefix else None)
        if prefix:
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
        converted = convert_ldm_vae_checkpoint(tensors, config)
    elif _has_prefix(shapes, "encoder.down_blocks."):
        config = _derive_diffusers_vae_config(shapes, template, name)
        converted = _rename_legacy_vae_attention(_read_tensors(path))
    else:
        raise CheckpointError(f"{name}: has no VAE encoder/decoder tensors; expected a VAE file")
    return build_module(AutoencoderKL, config, converted, source=name, what="VAE", device=device, dtype=dtype)


_LEGACY_VAE_ATTENTION = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
}


def _rename_legacy_vae_attention(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the old diffusers VAE attention names (``query/key/value/proj_attn``) to current ones."""
    renamed = {}
    for key, value in tensors.items():
        for old, new in _LEGACY_VAE_ATTENTION.items():
            key = key.replace(old, new)
        if ".attentions." in key and value.ndim == 4 and key.endswith(".weight") and "group_norm" not in key:
            value = value[:, :, 0, 0]
        renamed[key] = value
    return renamed


# ----------------------------------------------------------------------------------------------------
# Diffusers folders
# ----------------------------------------------------------------------------------------------------


def _from_pretrained(
    module_cls: type, folder: Path, subfolder: str | None, *, device: str | torch.device, dtype: torch.dtype
) -> Any:
    where = folder / subfolder if subfolder else folder
    if not (where / "config.json").is_file():
        raise CheckpointError(f"{where}: no config.json; not a diffusers model folder")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if module_cls in (CLIPTextModel, CLIPTextModelWithProjection):
        kwargs["dtype"] = dtype
    else:
        kwargs["torch_dtype"] = dtype
    try:
        module = module_cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{where}: could not load {module_cls.__name__} ({type(exc).__name__}: {exc})"
        ) from exc
    module.to(torch.device(device))
    module.eval()
    module.requires_grad_(False)
    return module


def _load_diffusers_folder(
    path: Path, *, device: str | torch.device, dtype: torch.dtype, skip_vae: bool
) -> SDXLComponents:
    name = str(path)
    if (
        not (path / "unet" / "config.json").is_file()
        or not (path / "text_encoder_2" / "config.json").is_file()
    ):
        raise CheckpointError(
            f"{name}: not an SDXL diffusers folder (needs unet/ and text_encoder_2/ subfolders)"
        )
    unet_config = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    if unet_config.get("addition_embed_type") != "text_time":
        raise CheckpointError(f"{name}: the UNet has no SDXL size conditioning; Foci needs an SDXL model")
    options = {"device": device, "dtype": dtype}
    unet = _from_pretrained(UNet2DConditionModel, path, "unet", **options)
    has_te1 = (path / "text_encoder" / "config.json").is_file()
    text_encoder = _from_pretrained(CLIPTextModel, path, "text_encoder", **options) if has_te1 else None
    text_encoder_2 = _from_pretrained(CLIPTextModelWithProjection, path, "text_encoder_2", **options)
    has_vae = (path / "vae" / "config.json").is_file()
    vae_config = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8")) if has_vae else None
    vae = _from_pretrained(AutoencoderKL, path, "vae", **options) if has_vae and not skip_vae else None
    prediction: Prediction = "eps"
    latent_format = SDXL_LATENT
    if vae_config is not None and vae_config.get("latents_mean") is not None:
        prediction, latent_format = "edm", PLAYGROUND_V25_LATENT
    else:
        scheduler = path / "scheduler" / "scheduler_config.json"
        if scheduler.is_file():
            scheduler_config = json.loads(scheduler.read_text(encoding="utf-8"))
            if scheduler_config.get("prediction_type") == "v_prediction":
                prediction = "v"
    info = ArchitectureInfo(
        kind="sdxl_base" if has_te1 else "sdxl_refiner",
        prediction=prediction,
        latent_format=latent_format,
        unet_config=dict(unet.config),
        vae_config=dict(vae.config) if vae is not None else vae_config,
        text_encoder_config=text_encoder.config.to_dict() if text_encoder is not None else None,
        text_encoder_2_config=text_encoder_2.config.to_dict(),
    )
    return SDXLComponents(
        info=info, unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, source=path
    )
