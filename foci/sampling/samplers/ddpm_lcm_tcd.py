"""DDPM, and the samplers of few-step distilled models: LCM and TCD."""

from __future__ import annotations

import torch
from torch import Tensor

from foci.sampling.model_sampling import DiscreteSampling, ModelSampling
from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import Denoiser, StepCallback, _model, _report


def sample_ddpm(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Ancestral DDPM posterior steps, computed in variance-preserving scaling."""
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = _model(denoiser, x, sigma)
        _report(callback, i, total, x, denoised, sigma)
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        eps = (x - denoised) / sigma
        alpha_cumprod = 1 / ((sigma * sigma) + 1)
        alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            variance = (1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)
            mu = mu + variance.sqrt() * noise.gaussian(x)
        x = mu
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev**2.0)
    return x


def sample_lcm(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Latent-consistency sampling: jump to x0, re-noise to the next sigma with fresh Gaussian noise."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        _report(callback, i, total, x, denoised, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            x = noise.gaussian(x) * sigmas[i + 1] + denoised
    return x


def sample_tcd(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None = None,
    *,
    model_sampling: ModelSampling | None = None,
    gamma: float = 0.3,
) -> Tensor:
    """Trajectory-consistency sampling (gamma 0.3): step to the intermediate timestep floor((1−γ)·t_next),
    then re-noise to the next sigma. Uses the model sampling's ``timestep`` and ``alphas_cumprod`` table; a
    sampling without one (EDM, where Fooocus would fail) falls back to the discrete SDXL schedule."""
    sampling = model_sampling if model_sampling is not None else DiscreteSampling()
    alphas_cumprod = getattr(sampling, "alphas_cumprod", None)
    if alphas_cumprod is None:
        sampling = DiscreteSampling()
        alphas_cumprod = sampling.alphas_cumprod
    timesteps_s = torch.floor((1 - gamma) * sampling.timestep(sigmas)).to(dtype=torch.long).detach().cpu()
    timesteps_s[-1] = 0
    alpha_prod_s = alphas_cumprod[timesteps_s].to(device=sigmas.device, dtype=sigmas.dtype)
    beta_prod_s = 1 - alpha_prod_s
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        eps = (x - denoised) / sigmas[i]
        denoised = alpha_prod_s[i + 1].sqrt() * denoised + beta_prod_s[i + 1].sqrt() * eps
        _report(callback, i, total, x, denoised, sigmas[i])
        x = denoised
        if gamma > 0 and sigmas[i + 1] > 0:
            fresh = noise.gaussian(x)
            # Clamped: when sigma_next is the table's sigma_min the difference is ±rounding and the
            # reference takes the square root of a tiny negative number (NaN). Identical otherwise.
            renoise = (sigmas[i + 1] ** 2 + 1 - 1 / alpha_prod_s[i + 1]).clamp(min=0).sqrt()
            x = x / alpha_prod_s[i + 1].sqrt() + fresh * renoise
        else:
            x = x * torch.sqrt(1.0 + sigmas[i + 1] ** 2)
    return x
