"""Loading a checkpoint or VAE file, or a diffusers folder, into modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from foci.models.checkpoint.convert import build_module, components_from_state_dict
from foci.models.checkpoint.detect import (
    _derive_diffusers_vae_config,
    _derive_vae_config,
    _has_prefix,
    _unsupported_family,
    detect_architecture,
)
from foci.models.checkpoint.files import _check_file, _file_kind, _read_tensors, read_tensor_shapes
from foci.models.checkpoint.layout import (
    UNET_PREFIX,
    VAE_PREFIX,
    ArchitectureInfo,
    CheckpointError,
    Prediction,
    SDXLComponents,
    load_shipped_config,
)
from foci.models.latent import PLAYGROUND_V25_LATENT, SDXL_LATENT

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
