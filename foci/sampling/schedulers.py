"""Noise schedules: the sigma sequence a sampler walks through (§2.6).

Every scheduler returns a float32 tensor that ends in 0. Fooocus computes schedules in two places, and they
disagree for two schedulers:

* the sampler loop (ComfyUI's ``KSampler``) only knows the six ComfyUI names ``normal, karras, exponential,
  sgm_uniform, simple, ddim_uniform``; it silently runs ``normal`` for ``turbo`` and ``align_your_steps``, drops
  the penultimate sigma for dpm_2/uni_pc samplers and truncates for partial denoise (:func:`compute_sigmas`);
* the Brownian tree of the SDE samplers spans the range of Fooocus's own schedule (real ``turbo``/AYS values,
  penultimate drop only for dpm_2) on the model's native sampling (:func:`brownian_tree_range`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from foci.sampling.model_sampling import ModelSampling
from foci.sampling.names import SCHEDULERS

SCHEDULER_NAMES: tuple[str, ...] = SCHEDULERS
# Schedulers that are really a model-sampling switch (§2.1 step 10) and the schedule they run.
REMAPPED_SCHEDULERS: dict[str, str] = {
    "lcm": "sgm_uniform", "tcd": "sgm_uniform", "edm_playground_v2.5": "karras",
}
# The schedulers ComfyUI's KSampler accepts; any other name makes it fall back to the first, ``normal``.
KSAMPLER_SCHEDULERS: tuple[str, ...] = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform")
# Samplers whose schedule is computed for one extra step with the penultimate sigma dropped.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset(
    {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
)
# Fooocus's own schedule for the Brownian-tree range drops the penultimate sigma for these two only.
TREE_DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset({"dpm_2", "dpm_2_ancestral"})

# NVIDIA "Align Your Steps" 10-step SDXL noise levels.
AYS_SDXL_NOISE_LEVELS: tuple[float, ...] = (
    14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
    0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
)


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: torch.device | str = "cpu"
) -> Tensor:
    """Karras et al. (2022) schedule: ``(max^(1/ρ) + ramp·(min^(1/ρ) − max^(1/ρ)))^ρ`` plus a final 0."""
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Log-linear from ``sigma_max`` to ``sigma_min`` in ``n`` points plus a final 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return _append_zero(sigmas)


def _timestep_uniform(sampling: ModelSampling, steps: int, sgm: bool) -> Tensor:
    start = sampling.timestep(torch.tensor(sampling.sigma_max, dtype=torch.float32))
    end = sampling.timestep(torch.tensor(sampling.sigma_min, dtype=torch.float32))
    if sgm:
        timesteps = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        timesteps = torch.linspace(float(start), float(end), steps)
    values = [float(sampling.sigma(timesteps[k])) for k in range(len(timesteps))]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def normal_sigmas(sampling: ModelSampling, steps: int) -> Tensor:
    """``steps`` points uniform in timestep space from t(sigma_max) to t(sigma_min), plus 0."""
    return _timestep_uniform(sampling, steps, sgm=False)


def sgm_uniform_sigmas(sampling: ModelSampling, steps: int) -> Tensor:
    """``steps + 1`` points uniform in timestep space with the last dropped, plus 0."""
    return _timestep_uniform(sampling, steps, sgm=True)


def simple_sigmas(sampling: ModelSampling, steps: int) -> Tensor:
    """Every ``len/steps``-th table sigma from the top, plus 0."""
    table = sampling.sigmas
    stride = len(table) / steps
    values = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def ddim_uniform_sigmas(sampling: ModelSampling, steps: int) -> Tensor:
    """Table sigmas at indices 1, 1+ss, 1+2ss, … (ss = len//steps), highest first, plus 0.

    Like the reference this can yield one more step than asked (e.g. 31 for 30 steps).
    """
    table = sampling.sigmas
    stride = max(len(table) // steps, 1)
    values = [float(table[index]) for index in range(1, len(table), stride)]
    return torch.tensor([*values[::-1], 0.0], dtype=torch.float32)


def turbo_sigmas(sampling: ModelSampling, steps: int) -> Tensor:
    """SD-Turbo timesteps 999, 899, …, 99 (at most 10), plus 0."""
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[:steps]
    sigmas = sampling.sigma(timesteps).float()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _loglinear_interp(levels: Sequence[float], num: int) -> np.ndarray:
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels[::-1], dtype=np.float64))
    new_ys = np.interp(np.linspace(0, 1, num), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps_sigmas(steps: int, levels: Sequence[float] = AYS_SDXL_NOISE_LEVELS) -> Tensor:
    """NVIDIA AYS levels, log-linearly interpolated to ``steps + 1`` points; the last is set to 0."""
    values = np.asarray(levels, dtype=np.float64)
    if steps + 1 != len(levels):
        values = _loglinear_interp(levels, steps + 1)
    values = values[-(steps + 1):].copy()
    values[-1] = 0
    return torch.tensor(values, dtype=torch.float32)


_SCHEDULES: dict[str, Callable[[ModelSampling, int], Tensor]] = {
    "normal": normal_sigmas,
    "karras": lambda s, n: karras_sigmas(n, float(s.sigma_min), float(s.sigma_max)),
    "exponential": lambda s, n: exponential_sigmas(n, float(s.sigma_min), float(s.sigma_max)),
    "sgm_uniform": sgm_uniform_sigmas,
    "simple": simple_sigmas,
    "ddim_uniform": ddim_uniform_sigmas,
    "turbo": turbo_sigmas,
    "align_your_steps": lambda s, n: align_your_steps_sigmas(n),
}


def schedule_sigmas(sampling: ModelSampling, scheduler: str, steps: int) -> Tensor:
    """The raw schedule for ``steps`` steps (no sampler or denoise adjustment)."""
    name = REMAPPED_SCHEDULERS.get(scheduler, scheduler)
    if name not in _SCHEDULES:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULER_NAMES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _SCHEDULES[name](sampling, steps)


def sampler_scheduler(scheduler: str, *, fooocus_scheduler_fallback: bool = True) -> str:
    """The schedule the sampler loop really runs for ``scheduler`` (§2.1 step 10, §2.6).

    ``lcm``/``tcd`` → ``sgm_uniform`` and ``edm_playground_v2.5`` → ``karras``. With
    ``fooocus_scheduler_fallback`` (the default, as Fooocus 2.5.5) a name ComfyUI's KSampler does not know —
    ``turbo`` and ``align_your_steps`` — runs as ``normal``; without it they run their own schedule.
    """
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULER_NAMES)}")
    name = REMAPPED_SCHEDULERS.get(scheduler, scheduler)
    if fooocus_scheduler_fallback and name not in KSAMPLER_SCHEDULERS:
        return KSAMPLER_SCHEDULERS[0]
    return name


def _with_penultimate_drop(sampling: ModelSampling, scheduler: str, steps: int, drop: bool) -> Tensor:
    if drop:
        sigmas = schedule_sigmas(sampling, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return schedule_sigmas(sampling, scheduler, steps)


def _truncated(build: Callable[[int], Tensor], steps: int, denoise: float) -> Tensor:
    """``build(steps)``, or for partial denoise the last ``steps + 1`` sigmas of ``build(int(steps/denoise))``."""
    if not denoise > 0.0:
        raise ValueError(f"denoise must be > 0, got {denoise}")
    if denoise > 0.9999:
        return build(steps)
    return build(int(steps / denoise))[-(steps + 1):]


def compute_sigmas(
    sampling: ModelSampling, scheduler: str, steps: int, *, sampler: str = "euler", denoise: float = 1.0,
    fooocus_scheduler_fallback: bool = True,
) -> Tensor:
    """Float32 sigmas ``[n+1]`` ending in 0 that ``sampler`` walks for ``steps`` steps (§2.6).

    ``sampling`` is the model sampling the sampler uses (see
    :func:`~foci.sampling.model_sampling.select_model_sampling`); the scheduler name goes through
    :func:`sampler_scheduler`. dpm_2/uni_pc samplers get ``steps + 1`` sigmas with the penultimate dropped.
    With ``denoise`` below 0.9999 the schedule is computed for ``int(steps/denoise)`` steps and only the last
    ``steps + 1`` sigmas are kept.
    """
    name = sampler_scheduler(scheduler, fooocus_scheduler_fallback=fooocus_scheduler_fallback)
    drop = sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    return _truncated(lambda n: _with_penultimate_drop(sampling, name, n, drop), steps, denoise)


def brownian_tree_range(
    native_sampling: ModelSampling, scheduler: str, steps: int, *, sampler: str = "euler", denoise: float = 1.0
) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of the per-image Brownian tree, computed as Fooocus does (§2.7).

    Fooocus sizes the tree before the sampler loads the model, so it sees the model's *native* sampling
    (SDXL's discrete table; EDM 0.002…80 for Playground v2.5), not the one the ``lcm``/``tcd``/
    ``edm_playground_v2.5`` schedulers patch in, and it runs its own schedule: real ``turbo`` and
    ``align_your_steps`` values, the penultimate sigma dropped only for dpm_2/dpm_2_ancestral.
    """
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULER_NAMES)}")
    name = REMAPPED_SCHEDULERS.get(scheduler, scheduler)
    drop = sampler in TREE_DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    sigmas = _truncated(lambda n: _with_penultimate_drop(native_sampling, name, n, drop), steps, denoise)
    return float(sigmas[sigmas > 0].min()), float(sigmas.max())
