"""Converting original (LDM) keys to diffusers' and building the modules from a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from foci.models.checkpoint.detect import detect_architecture
from foci.models.checkpoint.layout import (
    CLIP_G_BASE_PREFIX,
    CLIP_G_REFINER_PREFIX,
    CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ArchitectureInfo,
    CheckpointError,
    SDXLComponents,
)


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
