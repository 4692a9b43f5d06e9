"""The sampler names Fooocus offers, each mapped to its function, and :func:`run_sampler`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from foci.sampling.model_sampling import ModelSampling
from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import SAMPLER_NAMES, Denoiser, StepCallback
from foci.sampling.samplers.ddpm_lcm_tcd import sample_ddpm, sample_lcm, sample_tcd
from foci.sampling.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from foci.sampling.samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from foci.sampling.samplers.first_order import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_heunpp2,
    sample_lms,
)
from foci.sampling.samplers.restart_unipc import sample_restart, sample_uni_pc, sample_uni_pc_bh2

SamplerFunction = Callable[[Denoiser, Tensor, Tensor, NoiseSource, "StepCallback | None"], Tensor]

_SAMPLERS: dict[str, SamplerFunction] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "tcd": sample_tcd,
    "restart": sample_restart,
    "ddim": sample_euler,  # txt2img ddim is euler; its inpaint-noise difference is the pipeline's
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}


def run_sampler(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    *,
    model_sampling: ModelSampling | None = None,
) -> Tensor:
    """Run sampler ``name`` from ``x`` (already noised to ``sigmas[0]``) down the schedule.

    ``model_sampling`` is only consulted by ``tcd`` (its timesteps and alphas_cumprod); pass the one the
    denoiser uses. Unknown names raise ``ValueError``.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}")
    sigmas = sigmas.to(x.device)
    with torch.no_grad():
        if name == "tcd":
            return sample_tcd(denoiser, x, sigmas, noise, callback, model_sampling=model_sampling)
        return _SAMPLERS[name](denoiser, x, sigmas, noise, callback)
