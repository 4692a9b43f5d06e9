"""Sampler and scheduler names (torch-free): the one list the task, config, CLI, UI, API and samplers share."""

from __future__ import annotations

SAMPLERS: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "tcd", "restart", "ddim",
    "uni_pc", "uni_pc_bh2",
)
SCHEDULERS: tuple[str, ...] = (
    "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "lcm", "turbo",
    "align_your_steps", "tcd", "edm_playground_v2.5",
)
