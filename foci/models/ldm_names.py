"""Diffusers UNet parameter names mapped to the original single-file ("sgm"/ldm) names.

Used to read LoRAs that name layers the original way (kohya ``lora_unet_input_blocks_…``) and to write synthetic
checkpoints in the real layout.
"""

from __future__ import annotations

from typing import Any

_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_ldm_key(name: str, config: dict[str, Any]) -> str:
    """Map one diffusers UNet parameter name to its sgm name."""
    module, leaf = name.rsplit(".", 1)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    parts = module.split(".")
    per_level = config["layers_per_block"] + 1
    rest = ".".join(parts[4:])
    if parts[0] == "down_blocks":
        level = int(parts[1])
        if parts[2] == "downsamplers":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{leaf}"
        index = 1 + level * per_level + int(parts[3])
        slot = 0 if parts[2] == "resnets" else 1
        return f"input_blocks.{index}.{slot}.{resnet_ldm_name(rest) if slot == 0 else rest}.{leaf}"
    if parts[0] == "up_blocks":
        level = int(parts[1])
        if parts[2] == "upsamplers":
            has_attention = config["up_block_types"][level].startswith("CrossAttn")
            return (
                f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.conv.{leaf}"
            )
        index = level * per_level + int(parts[3])
        slot = 0 if parts[2] == "resnets" else 1
        return f"output_blocks.{index}.{slot}.{resnet_ldm_name(rest) if slot == 0 else rest}.{leaf}"
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{resnet_ldm_name('.'.join(parts[3:]))}.{leaf}"
        return f"middle_block.1.{'.'.join(parts[3:])}.{leaf}"
    raise KeyError(name)


def resnet_ldm_name(name: str) -> str:
    """Map a diffusers resnet sub-module name (``norm1``, ``conv_shortcut``, …) to its sgm name."""
    for old, new in _RESNET_RENAMES:
        if name == old:
            return new
    return name
