"""SDXL size conditioning ("ADM") the Fooocus way (§2.9).

Fooocus gives SDXL two size-conditioning vectors per prompt: an *emphasized* one whose "original size" is
the image size scaled by 1.5 (positive prompt) or 0.8 (negative prompt), used while ``t > 999·(1 −
adm_scaler_end)``, and a *consistent* one (original = target size) used afterwards. In diffusers terms each
vector is an ``add_time_ids`` row ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``; the UNet
turns it into Fourier features itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

POSITIVE_ADM_SCALE = 1.5
NEGATIVE_ADM_SCALE = 0.8
ADM_SCALER_END = 0.3
REFINER_POSITIVE_AESTHETIC_SCORE = 6.0
REFINER_NEGATIVE_AESTHETIC_SCORE = 2.5
SDXL_TIME_EMBED_DIM = 256


def round_to_64(value: float) -> int:
    """``int(round(value / 64)) * 64`` with Python's round-half-to-even, as Fooocus rounds target sizes."""
    return int(round(float(value) / 64.0)) * 64


def sdxl_size_time_ids(width: int, height: int, *, scale: float) -> tuple[list[float], list[float]]:
    """The (emphasized, consistent) SDXL time ids, each ``[orig_h, orig_w, crop_t, crop_l, tgt_h, tgt_w]``.

    ``width``/``height`` are the pixel size (latent size × 8). Emphasized: original = ``int(h·scale),
    int(w·scale)`` (truncation), crop 0, target rounded to 64. Consistent: original = target.
    """
    target_h, target_w = round_to_64(height), round_to_64(width)
    orig_h, orig_w = int(float(height) * scale), int(float(width) * scale)
    emphasized = [float(orig_h), float(orig_w), 0.0, 0.0, float(target_h), float(target_w)]
    consistent = [float(target_h), float(target_w), 0.0, 0.0, float(target_h), float(target_w)]
    return emphasized, consistent


def refiner_time_ids(width: int, height: int, *, aesthetic_score: float) -> list[float]:
    """SDXL-refiner time ids ``[h, w, 0, 0, aesthetic_score]`` (6.0 positive, 2.5 negative; not rounded)."""
    return [float(height), float(width), 0.0, 0.0, float(aesthetic_score)]


def use_emphasized_adm(timestep: float, adm_scaler_end: float = ADM_SCALER_END) -> bool:
    """Whether the emphasized vector applies at this discrete timestep: ``t > 999·(1 − end)``."""
    return timestep > 999.0 * (1.0 - float(adm_scaler_end))


def fourier_embedding(values: Sequence[float], dim: int = SDXL_TIME_EMBED_DIM) -> Tensor:
    """SDXL's sinusoidal features of each value, flattened to ``[len(values)·dim]`` (float32).

    Per value: ``[cos(v·f), sin(v·f)]`` with ``f = exp(−ln(10000)·arange(dim/2)/(dim/2))`` in float32 — the
    Kohya ordering Fooocus uses, identical to diffusers' ``Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = torch.tensor(list(values), dtype=torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.flatten()


def fooocus_adm_vector(pooled: Tensor, width: int, height: int, *, scale: float) -> Tensor:
    """Fooocus' 5632-d SDXL ``y``: ``pooled ‖ F(emphasized) ‖ pooled ‖ F(consistent)``, ``[B, 2·(P+1536)]``.

    ``scale`` is 1.5 for the positive prompt, 0.8 for the negative one (1.0 for neither).
    """
    emphasized, consistent = sdxl_size_time_ids(width, height, scale=scale)
    batch = pooled.shape[0]
    emb_emphasized = fourier_embedding(emphasized).unsqueeze(0).repeat(batch, 1)
    emb_consistent = fourier_embedding(consistent).unsqueeze(0).repeat(batch, 1)
    pooled = pooled.to(emb_emphasized)
    return torch.cat((pooled, emb_emphasized, pooled, emb_consistent), dim=1)


def select_adm_half(y: Tensor, timestep: float, adm_scaler_end: float = ADM_SCALER_END) -> Tensor:
    """Pick the emphasized (first) or consistent (second) half of a Fooocus ``y`` vector for this timestep."""
    half = y.shape[-1] // 2
    return y[..., :half] if use_emphasized_adm(timestep, adm_scaler_end) else y[..., half:]
