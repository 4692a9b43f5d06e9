"""The 24 Fooocus samplers as small functions over a denoiser (§2.7).

Each sampler walks the sigma schedule calling ``denoiser(x, sigma[B]) -> x0`` in k-diffusion's "Karras"
parameterisation (``x = x0 + sigma·n``), with the default options Fooocus uses. The update formulas follow
k-diffusion (Katherine Crowson, MIT) and the papers they implement, keeping the reference's operation order so
float32 results match. ``callback`` runs after the first model evaluation of each step, before the update.

The initial noise scaling is the caller's job: ``x`` arrives already noised to ``sigmas[0]``.

The package, one module per family: ``first_order`` (Euler, Heun, DPM-2, LMS), ``dpm_solver`` (fast, adaptive),
``dpmpp`` (DPM-Solver++ single-step and multistep), ``ddpm_lcm_tcd``, ``restart_unipc``; ``common`` holds the types
and step helpers they share and ``registry`` maps each name to its function (:func:`run_sampler`).
"""

from __future__ import annotations

from foci.sampling.samplers.common import SAMPLER_NAMES, Denoiser, StepCallback, StepInfo, ancestral_step, to_d
from foci.sampling.samplers.ddpm_lcm_tcd import sample_ddpm, sample_lcm, sample_tcd
from foci.sampling.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from foci.sampling.samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from foci.sampling.samplers.first_order import _lms_coefficient as _lms_coefficient  # tested directly
from foci.sampling.samplers.first_order import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_heunpp2,
    sample_lms,
)
from foci.sampling.samplers.registry import SamplerFunction, run_sampler
from foci.sampling.samplers.restart_unipc import sample_restart, sample_uni_pc, sample_uni_pc_bh2

__all__ = [
    "Denoiser", "SAMPLER_NAMES", "SamplerFunction", "StepCallback", "StepInfo", "ancestral_step", "run_sampler",
    "sample_ddpm", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpm_adaptive", "sample_dpm_fast",
    "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral", "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_heunpp2", "sample_lcm",
    "sample_lms", "sample_restart", "sample_tcd", "sample_uni_pc", "sample_uni_pc_bh2", "to_d",
]
