"""What an SDXL checkpoint holds: key prefixes, file suffixes, the records detection fills, errors, shipped configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from foci.models.latent import LatentFormat

CONFIG_ROOT = Path(__file__).parent.parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_BASE_PREFIX = "conditioner.embedders.1.model."
CLIP_G_REFINER_PREFIX = "conditioner.embedders.0.model."
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_HEAD_DIM = 64
CLIP_HEAD_DIM = 64


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
