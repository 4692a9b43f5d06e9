"""DPM-Solver with a fixed (``dpm_fast``) or adaptive (``dpm_adaptive``) step size."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import Denoiser, StepCallback, _report


class _PIDStepSizeController:
    """PID controller for adaptive step size (k-diffusion defaults: pure I-controller)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) in t = −log sigma with eps caching, as in k-diffusion."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.denoiser(x, sigma)) / self.sigma(t)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def step_2(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps))

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor],
               r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps))


def _dpm_sigma_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    sigma_max = sigmas[0]
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    return sigma_min.clone(), sigma_max.clone()


def sample_dpm_fast(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver-Fast: ``len(sigmas)-1`` evaluations on a uniform log-sigma grid from sigmas[0] to the
    smallest nonzero sigma, third-order steps with a lower-order tail (eta 0)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_sigma_range(sigmas)
    solver = _DPMSolver(denoiser)
    nfe = len(sigmas) - 1
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        eps = solver.eps(cache, "eps", x, t)
        denoised = x - solver.sigma(t) * eps
        _report(callback, i, len(orders), x, denoised, solver.sigma(t))
        step = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}[order]
        x = step(x, t, t_next, cache)
        # eta is 0, but the reference still draws (and zero-weights) one Gaussian sample per step.
        x = x + 0.0 * 1.0 * noise.gaussian(x)
    return x


def sample_dpm_adaptive(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver-23 with PID step-size control (rtol 0.05, atol 0.0078, h_init 0.05, eta 0).

    Only the end points of ``sigmas`` matter; ``StepInfo.total`` is the nominal ``len(sigmas) - 1`` and the
    number of reports (accepted plus rejected steps) may differ.
    """
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_sigma_range(sigmas)
    solver = _DPMSolver(denoiser)
    total = len(sigmas) - 1
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    order, rtol, atol, h_init, accept_safety = 3, 0.05, 0.0078, 0.05, 0.81
    forward = bool(t_end > t_start)
    atol_t = torch.tensor(atol)
    rtol_t = torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PIDStepSizeController(abs(h_init) * (1 if forward else -1), 0.0, 1.0, 0.0, order, accept_safety)
    steps = 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        x_low = solver.step_2(x, s, t, cache, r1=1 / 3)
        x_high = solver.step_3(x, s, t, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + 0.0 * 1.0 * noise.gaussian(x)
            s = t
        steps += 1
        _report(callback, steps - 1, total, x, denoised, solver.sigma(s))
    return x
