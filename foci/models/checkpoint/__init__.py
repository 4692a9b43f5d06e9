"""Load SDXL checkpoints (single file or diffusers folder) into diffusers/transformers modules, offline.

Detection works from tensor names and shapes only: the shipped SDXL configs (``foci/models/configs``)
are the template, and everything the shapes determine (channels, depths, widths, ...) is read from the
file. A real SDXL file therefore yields exactly the shipped config and a tiny synthetic file its tiny
config, through the same code path.
Nothing is ever fetched from a hub: conversion uses diffusers' single-file key maps with these local configs.

The package: ``layout`` (key prefixes, suffixes, records, errors, shipped configs), ``files`` (reading safetensors
and PyTorch files), ``detect`` (architecture and configs from shapes), ``convert`` (keys to diffusers, building
modules) and ``load`` (checkpoint, VAE and diffusers-folder loading).
"""

from __future__ import annotations

from foci.models.checkpoint.convert import build_module, components_from_state_dict, convert_to_diffusers
from foci.models.checkpoint.detect import detect_architecture
from foci.models.checkpoint.files import read_tensor_shapes
from foci.models.checkpoint.layout import (
    CLIP_G_BASE_PREFIX,
    CLIP_G_REFINER_PREFIX,
    CLIP_HEAD_DIM,
    CLIP_L_PREFIX,
    CONFIG_ROOT,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    UNET_HEAD_DIM,
    UNET_PREFIX,
    VAE_PREFIX,
    ArchitectureInfo,
    CheckpointError,
    CorruptFileError,
    ModelKind,
    Prediction,
    SDXLComponents,
    Shapes,
    load_shipped_config,
)
from foci.models.checkpoint.load import load_checkpoint, load_vae

__all__ = [
    "CLIP_G_BASE_PREFIX", "CLIP_G_REFINER_PREFIX", "CLIP_HEAD_DIM", "CLIP_L_PREFIX", "CONFIG_ROOT", "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES", "UNET_HEAD_DIM", "UNET_PREFIX", "VAE_PREFIX", "ArchitectureInfo", "CheckpointError",
    "CorruptFileError", "ModelKind", "Prediction", "SDXLComponents", "Shapes", "build_module",
    "components_from_state_dict", "convert_to_diffusers", "detect_architecture", "load_checkpoint",
    "load_shipped_config", "load_vae", "read_tensor_shapes",
]
