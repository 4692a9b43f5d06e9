"""Deterministic random-weight SDXL checkpoints in the original single-file ("sgm") layout, for tests.

``checkpoint_layout`` lists every tensor name and shape exactly as a real SDXL base/refiner file names
them (the full base has 2515 tensors); ``write_checkpoint`` streams such a file to disk tensor by tensor,
so even the full-size layout never needs more memory than its largest tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from foci.models.checkpoint import (
    CLIP_G_BASE_PREFIX,
    CLIP_G_REFINER_PREFIX,
    CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    load_shipped_config,
)
from foci.models.ldm_names import unet_ldm_key

Size = Literal["tiny", "full"]
Kind = Literal["base", "refiner"]
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_NORM_NAMES = {
    "norm",
    "norm1",
    "norm2",
    "norm3",
    "norm_out",
    "layer_norm1",
    "layer_norm2",
    "final_layer_norm",
    "ln_1",
    "ln_2",
    "ln_final",
}
_LOGIT_SCALE = math.log(1 / 0.07)

# Tiny variants: the shipped configs with these overrides. Widths follow SDXL's head-size-64 rule so detection
# recovers exactly these configs; CLIP-L and CLIP-G widths differ on purpose (same widths confuse diffusers).
_TINY_UNET = {
    "base": {
        "block_out_channels": [64, 128],
        "attention_head_dim": [1, 2],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 1],
        "cross_attention_dim": 192,
        "addition_time_embed_dim": 32,
        "projection_class_embeddings_input_dim": 6 * 32 + 64,
    },
    "refiner": {
        "block_out_channels": [64, 128, 128],
        "attention_head_dim": [1, 2, 2],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": 1,
        "cross_attention_dim": 128,
        "addition_time_embed_dim": 32,
        "projection_class_embeddings_input_dim": 5 * 32 + 64,
    },
}
_TINY_VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 2}
_TINY_CLIP_L = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 1,
    "num_hidden_layers": 2,
    "projection_dim": 64,
}
_TINY_CLIP_G = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 64,
}


def component_configs(size: Size = "tiny", kind: Kind = "base") -> dict[str, dict[str, Any]]:
    """Configs of the synthetic model: keys unet, vae, text_encoder (base only), text_encoder_2."""
    model = "sdxl_base" if kind == "base" else "sdxl_refiner"
    configs = {
        "unet": load_shipped_config(model, "unet"),
        "vae": load_shipped_config(model, "vae"),
        "text_encoder_2": load_shipped_config(model, "text_encoder_2"),
    }
    if kind == "base":
        configs["text_encoder"] = load_shipped_config(model, "text_encoder")
    if size == "tiny":
        configs["unet"].update(_TINY_UNET[kind])
        configs["vae"].update(_TINY_VAE)
        configs["text_encoder_2"].update(_TINY_CLIP_G)
        if kind == "base":
            configs["text_encoder"].update(_TINY_CLIP_L)
    return configs


# ----------------------------------------------------------------------------------------------------
# diffusers names -> original (sgm) names
# ----------------------------------------------------------------------------------------------------

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key(name: str, levels: int) -> str:
    """Map one diffusers AutoencoderKL parameter name to its sgm name."""
    module, leaf = name.rsplit(".", 1)
    parts = module.split(".")
    side = parts[0]
    if len(parts) == 1:
        return name  # quant_conv, post_quant_conv
    if parts[1] in ("conv_in", "conv_out"):
        return name
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{leaf}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            inner = parts[4].replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(parts[3]) + 1}.{inner}.{leaf}"
        return f"{side}.mid.attn_1.{_VAE_ATTENTION['.'.join(parts[4:])]}.{leaf}"
    level = int(parts[2])
    sgm_level, stage = (level, "down") if side == "encoder" else (levels - 1 - level, "up")
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{side}.{stage}.{sgm_level}.{'downsample' if stage == 'down' else 'upsample'}.conv.{leaf}"
    inner = parts[5].replace("conv_shortcut", "nin_shortcut")
    return f"{side}.{stage}.{sgm_level}.block.{int(parts[4])}.{inner}.{leaf}"


def _clip_l_layout(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    p = CLIP_L_PREFIX + "text_model."
    layout = {
        p + "embeddings.position_ids": (1, config["max_position_embeddings"]),
        p + "embeddings.position_embedding.weight": (config["max_position_embeddings"], hidden),
        p + "embeddings.token_embedding.weight": (config["vocab_size"], hidden),
        p + "final_layer_norm.weight": (hidden,),
        p + "final_layer_norm.bias": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layout[f"{layer}self_attn.{proj}.weight"] = (hidden, hidden)
            layout[f"{layer}self_attn.{proj}.bias"] = (hidden,)
        for norm in ("layer_norm1", "layer_norm2"):
            layout[f"{layer}{norm}.weight"] = (hidden,)
            layout[f"{layer}{norm}.bias"] = (hidden,)
        layout[f"{layer}mlp.fc1.weight"] = (inter, hidden)
        layout[f"{layer}mlp.fc1.bias"] = (inter,)
        layout[f"{layer}mlp.fc2.weight"] = (hidden, inter)
        layout[f"{layer}mlp.fc2.bias"] = (hidden,)
    return layout


def _clip_g_layout(config: dict[str, Any], prefix: str) -> dict[str, tuple[int, ...]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    layout = {
        prefix + "positional_embedding": (config["max_position_embeddings"], hidden),
        prefix + "token_embedding.weight": (config["vocab_size"], hidden),
        prefix + "text_projection": (hidden, config["projection_dim"]),
        prefix + "logit_scale": (),
        prefix + "ln_final.weight": (hidden,),
        prefix + "ln_final.bias": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        block = f"{prefix}transformer.resblocks.{i}."
        layout[block + "attn.in_proj_weight"] = (3 * hidden, hidden)
        layout[block + "attn.in_proj_bias"] = (3 * hidden,)
        layout[block + "attn.out_proj.weight"] = (hidden, hidden)
        layout[block + "attn.out_proj.bias"] = (hidden,)
        for norm in ("ln_1", "ln_2"):
            layout[f"{block}{norm}.weight"] = (hidden,)
            layout[f"{block}{norm}.bias"] = (hidden,)
        layout[block + "mlp.c_fc.weight"] = (inter, hidden)
        layout[block + "mlp.c_fc.bias"] = (inter,)
        layout[block + "mlp.c_proj.weight"] = (hidden, inter)
        layout[block + "mlp.c_proj.bias"] = (hidden,)
    return layout


def checkpoint_layout(size: Size = "tiny", kind: Kind = "base") -> dict[str, tuple[int, ...]]:
    """Every tensor name → shape of an SDXL single file in the original layout (sorted by name, no data)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    configs = component_configs(size, kind)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    layout: dict[str, tuple[int, ...]] = {}
    for name, tensor in unet.state_dict().items():
        layout[UNET_PREFIX + unet_ldm_key(name, configs["unet"])] = tuple(tensor.shape)
    levels = len(configs["vae"]["block_out_channels"])
    for name, tensor in vae.state_dict().items():
        shape = tuple(tensor.shape)
        if ".attentions." in name and name.endswith(".weight") and len(shape) == 2:
            shape = (*shape, 1, 1)  # sgm stores the VAE attention projections as 1x1 convolutions
        layout[VAE_PREFIX + _vae_key(name, levels)] = shape
    if kind == "base":
        layout.update(_clip_l_layout(configs["text_encoder"]))
        layout.update(_clip_g_layout(configs["text_encoder_2"], CLIP_G_BASE_PREFIX))
    else:
        layout.update(_clip_g_layout(configs["text_encoder_2"], CLIP_G_REFINER_PREFIX))
    return dict(sorted(layout.items()))


# ----------------------------------------------------------------------------------------------------
# Deterministic weights and streaming writer
# ----------------------------------------------------------------------------------------------------


def _is_norm(key: str) -> bool:
    module = key.rsplit(".", 1)[0]
    last = module.rsplit(".", 1)[-1]
    return (
        last in _NORM_NAMES
        or module.endswith((".in_layers.0", ".out_layers.0"))
        or module == UNET_PREFIX + "out.0"
    )


def synthetic_tensor(key: str, shape: tuple[int, ...], *, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """The deterministic value of one synthetic tensor (depends only on seed, name and shape)."""
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if key.endswith("logit_scale"):
        return torch.full(shape, _LOGIT_SCALE, dtype=dtype)
    if _is_norm(key):
        return (torch.ones if key.endswith(".weight") else torch.zeros)(shape, dtype=dtype)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if "embedding" in key:
        std = 0.02
    elif key.endswith("text_projection"):
        std = 1 / math.sqrt(shape[0])
    elif len(shape) >= 2:
        std = 1 / math.sqrt(math.prod(shape[1:]))
    else:
        std = 0.02
    return (values * std).to(dtype)


def _tensor_dtype(key: str, dtype: torch.dtype) -> torch.dtype:
    return torch.int64 if key.endswith("position_ids") else dtype


def write_safetensors_stream(
    path: Path,
    layout: dict[str, tuple[int, ...]],
    dtypes: dict[str, torch.dtype],
    tensors: Iterator[tuple[str, torch.Tensor]],
    metadata: dict[str, str],
) -> Path:
    """Write a safetensors file whose tensors are produced one at a time, in ``layout`` order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, shape in layout.items():
        dtype = dtypes[key]
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for key, tensor in tensors:
            expected = header[key]
            if list(tensor.shape) != expected["shape"] or tensor.dtype != dtypes[key]:
                raise ValueError(f"tensor {key} does not match its layout entry")
            handle.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    partial.replace(path)
    return path


def write_checkpoint(
    path: str | Path,
    *,
    size: Size = "tiny",
    kind: Kind = "base",
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a deterministic random-weight SDXL checkpoint in the original single-file layout."""
    layout = checkpoint_layout(size, kind)
    return _write_layout(
        Path(path),
        layout,
        layout,
        seed=seed,
        dtype=dtype,
        metadata={"format": "pt", "foci.synthetic": f"{size}/{kind}/seed={seed}"},
    )


def write_vae(
    path: str | Path, *, size: Size = "tiny", seed: int = 0, dtype: torch.dtype = torch.float16
) -> Path:
    """Write a standalone VAE file (sgm names without ``first_stage_model.``) like the VAE of a checkpoint."""
    full = checkpoint_layout(size, "base")
    source = {k: v for k, v in full.items() if k.startswith(VAE_PREFIX)}
    names = {k.removeprefix(VAE_PREFIX): k for k in source}
    return _write_layout(
        Path(path),
        {k: source[v] for k, v in names.items()},
        source,
        seed=seed,
        dtype=dtype,
        metadata={"format": "pt", "foci.synthetic": f"{size}/vae/seed={seed}"},
        names=names,
    )


def _write_layout(
    path: Path,
    layout: dict[str, tuple[int, ...]],
    source: dict[str, tuple[int, ...]],
    *,
    seed: int,
    dtype: torch.dtype,
    metadata: dict[str, str],
    names: dict[str, str] | None = None,
) -> Path:
    """Stream ``layout``; each tensor's value is that of its ``names`` entry (its checkpoint name)."""
    names = names or {k: k for k in layout}

    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        for key, shape in layout.items():
            yield key, synthetic_tensor(names[key], shape, seed=seed, dtype=_tensor_dtype(key, dtype))

    dtypes = {key: _tensor_dtype(key, dtype) for key in layout}
    return write_safetensors_stream(path, layout, dtypes, produce(), metadata)
