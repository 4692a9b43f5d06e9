"""Model sampling: the sigma table a model was trained on and its input/output preconditioning (§2.6).

Three families are provided:

* :class:`DiscreteSampling` — SDXL's 1000-step DDPM schedule in the Kohya-consistent float64 precision that
  Fooocus patches in; eps- or v-prediction.
* :class:`DistilledSampling` — the 50-step subset used by LCM and TCD LoRAs.
* :class:`EDMSampling` — continuous EDM (Playground v2.5).

Every class exposes the same small surface (:class:`ModelSampling`) that the schedulers, the samplers and the
pipeline's denoiser use. All tables are float32; formulas keep the operation order of the reference so that
float32 results agree bit-for-bit where possible.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

Prediction = Literal["eps", "v"]
# Distances to the log-sigma table closer than this many float32 ulps count as a tie (see _nearest_index).
NEAR_TIE_ULPS = 4.0


@runtime_checkable
class ModelSampling(Protocol):
    """What schedulers, samplers and the denoiser need to know about a model's noise parameterisation."""

    sigmas: Tensor
    sigma_min: float
    sigma_max: float

    def timestep(self, sigma: Tensor) -> Tensor:
        """The UNet timestep (float tensor, same shape as ``sigma``)."""
        ...

    def sigma(self, timestep: Tensor) -> Tensor:
        """Inverse of :meth:`timestep` (interpolating between table entries)."""
        ...

    def scale_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        """UNet input from the noisy latent ``x`` (``sigma`` has shape ``[B]``)."""
        ...

    def to_denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """Predicted clean latent x0 from the UNet output."""
        ...


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    """View a ``[B]`` sigma so that it broadcasts against ``like`` (``[B, 1, 1, 1]`` for latents)."""
    return sigma.view(sigma.shape[:1] + (1,) * (like.ndim - 1))


def kohya_schedule(
    timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> tuple[Tensor, Tensor]:
    """SDXL's "scaled linear" DDPM schedule, computed in float64 like Kohya/Fooocus.

    Returns ``(sigmas, alphas_cumprod)`` as float32 tensors of length ``timesteps`` (ascending sigma).
    """
    betas = (torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2).numpy()
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    sigmas = torch.tensor(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, dtype=torch.float32)
    return sigmas, torch.tensor(alphas_cumprod, dtype=torch.float32)


class DiscreteSampling:
    """Discrete 1000-step schedule; the UNet sees the nearest integer timestep (returned as float).

    ``prediction`` is ``"eps"`` (SDXL default) or ``"v"`` (checkpoints carrying a ``v_pred`` key).
    """

    sigma_data = 1.0

    def __init__(self, prediction: Prediction = "eps") -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.prediction: str = prediction
        sigmas, alphas_cumprod = kohya_schedule()
        self.num_timesteps = len(sigmas)
        self.alphas_cumprod: Tensor = alphas_cumprod  # full 1000-entry table (TCD indexes it by timestep)
        self._set_sigmas(sigmas)

    def _set_sigmas(self, sigmas: Tensor) -> None:
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def _nearest_index(self, sigma: Tensor) -> Tensor:
        """``argmin |log sigma - log sigma_t|``, computed in float32 as the reference, first index on a tie.

        A sigma interpolated exactly halfway between two table entries (e.g. the 4-step LCM schedule's
        timestep 509) is a mathematical tie that the reference resolves to the lower index; in float32 the two
        distances differ only by the last bit of ``log``, which depends on the CPU's vector kernels (an AMX
        Xeon flips it). Distances within a few float32 ulps of the minimum therefore count as equal and the
        first of them wins, so the result is the same on every CPU. Table entries are at least 0.003 apart in
        log space, thousands of times the tolerance, so every other sigma keeps its plain ``argmin``.
        """
        log_sigma = sigma.log().to(self.log_sigmas.device)
        dists = (log_sigma - self.log_sigmas[:, None]).abs()
        tolerance = NEAR_TIE_ULPS * torch.finfo(torch.float32).eps * (log_sigma.abs().float() + 1.0)
        within = dists <= dists.min(dim=0).values + tolerance
        return within.to(torch.uint8).argmax(dim=0).view(sigma.shape)

    def timestep(self, sigma: Tensor) -> Tensor:
        """Nearest discrete index ``argmin |log sigma - log sigma_t|`` as a float tensor."""
        return self._nearest_index(sigma).to(sigma.device).float()

    def _interpolate(self, t: Tensor) -> Tensor:
        t = torch.clamp(t, min=0, max=len(self.sigmas) - 1)
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def sigma(self, timestep: Tensor) -> Tensor:
        """``exp`` of the linear interpolation of ``log_sigmas`` at the (fractional) timestep."""
        return self._interpolate(timestep.float().to(self.log_sigmas.device)).to(timestep.device)

    def scale_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x / sqrt(sigma² + 1)``."""
        sigma = _per_sample(sigma, x)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def to_denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """eps: ``x - sigma·eps``; v: ``x/(sigma²+1) - v·sigma/sqrt(sigma²+1)``."""
        sigma = _per_sample(sigma, model_output)
        if self.prediction == "v":
            sd = self.sigma_data
            return x * sd**2 / (sigma**2 + sd**2) - model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5
        return x - model_output * sigma


class DistilledSampling(DiscreteSampling):
    """The 50-sigma subset (t = 19, 39, …, 999) that LCM/TCD were distilled on.

    ``mode="lcm"`` applies the LCM consistency boundary condition (c_skip/c_out with sigma_data 0.5 and
    timestep scaling 10); ``mode="tcd"`` is plain eps prediction.
    """

    original_timesteps = 50

    def __init__(self, mode: Literal["lcm", "tcd"] = "lcm") -> None:
        if mode not in ("lcm", "tcd"):
            raise ValueError(f"mode must be 'lcm' or 'tcd', got {mode!r}")
        super().__init__("eps")
        self.mode: str = mode
        full = self.sigmas
        self.skip_steps = self.num_timesteps // self.original_timesteps
        valid = torch.zeros(self.original_timesteps, dtype=torch.float32)
        for k in range(self.original_timesteps):
            valid[self.original_timesteps - 1 - k] = full[self.num_timesteps - 1 - k * self.skip_steps]
        self._set_sigmas(valid)

    def timestep(self, sigma: Tensor) -> Tensor:
        """Nearest distilled sigma, reported as ``index·20 + 19``."""
        index = self._nearest_index(sigma)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device).float()

    def sigma(self, timestep: Tensor) -> Tensor:
        """Interpolate the 50-entry table at ``(timestep - 19) / 20``."""
        t = ((timestep.float().to(self.log_sigmas.device) - (self.skip_steps - 1)) / self.skip_steps).float()
        return self._interpolate(t).to(timestep.device)

    def to_denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """eps x0, and for LCM the consistency-model mix ``c_out·x0 + c_skip·x``."""
        if self.mode != "lcm":
            return super().to_denoised(model_output, x, sigma)
        timestep = _per_sample(self.timestep(sigma), model_output)
        sigma = _per_sample(sigma, model_output)
        x0 = x - model_output * sigma
        sigma_data = 0.5
        scaled_timestep = timestep * 10.0
        c_skip = sigma_data**2 / (scaled_timestep**2 + sigma_data**2)
        c_out = scaled_timestep / (scaled_timestep**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * x


class EDMSampling:
    """Continuous EDM sampling (Playground v2.5): log-uniform sigma table, timestep ``0.25·ln sigma``."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 120.0, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data
        self.prediction = "edm"
        self.sigmas: Tensor = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas: Tensor = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """``0.25·ln sigma``."""
        return 0.25 * sigma.log()

    def sigma(self, timestep: Tensor) -> Tensor:
        """``exp(timestep / 0.25)``."""
        return (timestep / 0.25).exp()

    def scale_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``c_in·x`` with ``c_in = 1/sqrt(sigma² + sigma_data²)``."""
        sigma = _per_sample(sigma, x)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def to_denoised(self, model_output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """EDM preconditioning: ``x·sd²/(s²+sd²) + out·s·sd/sqrt(s²+sd²)``."""
        sigma = _per_sample(sigma, model_output)
        sd = self.sigma_data
        return x * sd**2 / (sigma**2 + sd**2) + model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5


def native_model_sampling(prediction: Literal["eps", "v", "edm"] = "eps") -> ModelSampling:
    """The sampling a checkpoint loads with, before any scheduler patches it (§2.1 step 10).

    SDXL's discrete table (eps or v); a Playground v2.5 (EDM) checkpoint: EDM 0.002…80 with sigma_data 0.5.
    """
    if prediction == "edm":
        return EDMSampling(0.002, 80.0, 0.5)
    return DiscreteSampling(prediction)


def select_model_sampling(
    scheduler: str, prediction: Literal["eps", "v", "edm"] = "eps"
) -> tuple[ModelSampling, str]:
    """Pick the model sampling and the scheduler that actually runs (§2.1 step 10).

    ``lcm``/``tcd`` → distilled 50-step sampling with ``sgm_uniform``; ``edm_playground_v2.5`` → EDM
    0.002…120 with ``karras``; an EDM-prediction model with any other scheduler → EDM 0.002…80; otherwise the
    discrete schedule with the requested scheduler unchanged.
    """
    if scheduler in ("lcm", "tcd"):
        return DistilledSampling(scheduler), "sgm_uniform"  # type: ignore[arg-type]
    if scheduler == "edm_playground_v2.5":
        return EDMSampling(0.002, 120.0, 0.5), "karras"
    return native_model_sampling(prediction), scheduler
