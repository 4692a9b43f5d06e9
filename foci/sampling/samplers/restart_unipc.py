"""Restart sampling, and the adapters that run UniPC (:mod:`foci.sampling.uni_pc`) as a sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import Denoiser, StepCallback, _model, _report, to_d
from foci.sampling.schedulers import karras_sigmas
from foci.sampling.uni_pc import sample_unipc


def _restart_steps(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The (sigma, sigma_next) pairs of restart sampling with the automatic restart list.

    From 20 steps on, a Karras schedule over the same range takes the place of ``sigmas`` and a block of
    Karras steps from sigma ≈ 2 down to ≈ 0.1 is repeated once (twice from 36 steps) after reaching 0.1.
    """
    steps = sigmas.shape[0] - 1
    restart_list: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = karras_sigmas(
            steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), device=sigmas.device
        )
        restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    pairs: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            block_steps, times, restart_max = by_index[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                block = karras_sigmas(
                    block_steps, sigmas[min_idx].item(), sigmas[max_idx].item(), device=sigmas.device
                )[:-1]
                for _ in range(times):
                    pairs.extend(zip(block[:-1], block[1:], strict=True))
    return pairs


def sample_restart(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Restart sampling (Xu et al. 2023) with Heun steps; restarts re-noise with fresh Gaussian noise.

    ``StepInfo.total`` is the number of Heun steps actually taken (restart blocks included).
    """
    pairs = _restart_steps(sigmas)
    total = len(pairs)
    last_sigma: Tensor | None = None
    for step_id, (old_sigma, new_sigma) in enumerate(pairs):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise.gaussian(x) * 1.0 * (old_sigma**2 - last_sigma**2) ** 0.5
        denoised = _model(denoiser, x, old_sigma)
        d = to_d(x, old_sigma, denoised)
        _report(callback, step_id, total, x, denoised, old_sigma)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, _model(denoiser, x_2, new_sigma))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def _unipc_hook(callback: StepCallback | None) -> Callable[[int, int, Tensor, Tensor, Tensor], None] | None:
    if callback is None:
        return None
    return lambda index, total, x, denoised, sigma: _report(callback, index, total, x, denoised, sigma)


def sample_uni_pc(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """UniPC multistep, B(h) = h (bh1), order 3, data prediction."""
    return sample_unipc(denoiser, x, sigmas, _unipc_hook(callback), variant="bh1")


def sample_uni_pc_bh2(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """UniPC multistep, B(h) = e^h − 1 (bh2), order 3, data prediction."""
    return sample_unipc(denoiser, x, sigmas, _unipc_hook(callback), variant="bh2")
