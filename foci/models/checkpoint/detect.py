"""Detecting the architecture from tensor names and shapes, and deriving the diffusers/transformers configs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from foci.models.checkpoint.layout import (
    CLIP_G_BASE_PREFIX,
    CLIP_G_REFINER_PREFIX,
    CLIP_HEAD_DIM,
    CLIP_L_PREFIX,
    UNET_HEAD_DIM,
    UNET_PREFIX,
    VAE_PREFIX,
    ArchitectureInfo,
    CheckpointError,
    ModelKind,
    Prediction,
    Shapes,
    load_shipped_config,
)
from foci.models.latent import PLAYGROUND_V25_LATENT, SDXL_LATENT


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
