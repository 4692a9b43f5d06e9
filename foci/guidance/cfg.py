"""Fooocus' CFG function: sharpness on the positive branch and "CFG mimicking" (§2.8 steps 2–4)."""

from __future__ import annotations

import torch
from torch import Tensor

from foci.guidance.sharpness import anisotropic_filter

SHARPNESS_FACTOR = 0.001


def guidance_progress(timestep: float) -> float:
    """Diffusion progress ``1 − t/999`` of a discrete timestep, in float32 as Fooocus' UNet wrapper has it.

    0 at the first step (t = 999), 1 at the end (t = 0). Used by sharpness, CFG mimicking and IP-Adapter
    stops.
    """
    t = torch.tensor([timestep], dtype=torch.float32)
    return float((1.0 - t / 999.0)[0])


def mimicked_cfg(uncond_eps: Tensor, cond_eps: Tensor, *, cfg_scale: float, mimic_scale: float,
                 progress: float) -> Tensor:
    """Combine two noise predictions with CFG; above ``mimic_scale`` blend towards the mimicked (lower) scale.

    ``real = u + cfg·(c − u)``; if ``cfg > mimic``: ``real·p + (u + mimic·(c − u))·(1 − p)``, else ``real``.
    """
    real_eps = uncond_eps + float(cfg_scale) * (cond_eps - uncond_eps)
    if cfg_scale > mimic_scale:
        mimic_eps = uncond_eps + float(mimic_scale) * (cond_eps - uncond_eps)
        return real_eps * progress + mimic_eps * (1 - progress)
    return real_eps


def fooocus_guidance(x: Tensor, x0_positive: Tensor, x0_negative: Tensor, *, cfg_scale: float,
                     sharpness: float, mimic_scale: float, progress: float) -> Tensor:
    """Guided x0 as Fooocus computes it (CFG == 1 is the caller's job: it uses the positive x0 alone).

    ``eps± = x − x0±``; ``alpha = 0.001·sharpness·progress``; the positive eps is blended with its
    anisotropic filter (guide ``x0+``) by ``alpha``; the two eps are combined by :func:`mimicked_cfg`;
    returns ``x − eps``.
    """
    positive_eps = x - x0_positive
    negative_eps = x - x0_negative
    alpha = SHARPNESS_FACTOR * sharpness * progress
    if alpha == 0.0:
        # filtered·0 + eps·1 == eps exactly, so the (costly) filter can be skipped.
        sharpened_eps = positive_eps
    else:
        filtered_eps = anisotropic_filter(positive_eps, guide=x0_positive)
        sharpened_eps = filtered_eps * alpha + positive_eps * (1.0 - alpha)
    final_eps = mimicked_cfg(negative_eps, sharpened_eps, cfg_scale=cfg_scale, mimic_scale=mimic_scale,
                             progress=progress)
    return x - final_eps
