"""The 24 Fooocus samplers as small functions over a denoiser (§2.7).

Each sampler walks the sigma schedule calling ``denoiser(x, sigma[B]) -> x0`` in k-diffusion's "Karras"
parameterisation (``x = x0 + sigma·n``), with the default options Fooocus uses. The update formulas follow
k-diffusion (Katherine Crowson, MIT) and the papers they implement, keeping the reference's operation order so
float32 results match. ``callback`` runs after the first model evaluation of each step, before the update.

The initial noise scaling is the caller's job: ``x`` arrives already noised to ``sigmas[0]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from foci.sampling.model_sampling import DiscreteSampling, ModelSampling
from foci.sampling.names import SAMPLERS
from foci.sampling.noise import NoiseSource
from foci.sampling.schedulers import karras_sigmas
from foci.sampling.uni_pc import sample_unipc

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepInfo:
    """What a sampler reports after a model evaluation.

    ``index`` counts steps from 0 (k-diffusion's ``i``), ``total`` is the number of reports to expect
    (``len(sigmas) - 1`` for most samplers), ``sigma`` is the noise level the model was evaluated at.
    """

    index: int
    total: int
    x: Tensor
    denoised: Tensor
    sigma: Tensor


StepCallback = Callable[[StepInfo], None]

SAMPLER_NAMES: tuple[str, ...] = SAMPLERS


# ----------------------------------------------------------------------------------------------- helpers


def _model(denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    """Evaluate the denoiser at a scalar sigma broadcast to the batch."""
    return denoiser(x, sigma * x.new_ones([x.shape[0]]))


def _report(
    callback: StepCallback | None, index: int, total: int, x: Tensor, denoised: Tensor, sigma: Tensor
) -> None:
    if callback is not None:
        callback(StepInfo(index=index, total=total, x=x, denoised=denoised, sigma=sigma))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras ODE derivative ``(x − x0)/sigma``."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(sigma_down, sigma_up)`` of an ancestral step: deterministic target and the noise to add back."""
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _sigma_fn(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t_fn(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


# ------------------------------------------------------------------------------------- first-order / Heun


def sample_euler(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras Algorithm 2 without churn)."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, total, x, denoised, sigmas[i])
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Euler step to sigma_down, then fresh Gaussian noise up to the next sigma (eta 1)."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, total, x, denoised, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise.gaussian(x) * 1.0 * sigma_up
    return x


def sample_heun(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Heun's second-order method; the step to sigma 0 is plain Euler."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, total, x, denoised, sigmas[i])
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], _model(denoiser, x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Heun++ (three-slope weighted Heun from sd-webui-samplers-scheduler, as in Fooocus).

    Like the reference it draws (and discards) one Gaussian sample per step, keeping the RNG stream aligned.
    """
    total = len(sigmas) - 1
    s_end = sigmas[-1]
    for i in range(total):
        noise.gaussian(x)  # the reference draws churn noise every step even though churn is 0
        denoised = _model(denoiser, x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, total, x, denoised, sigmas[i])
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], _model(denoiser, x_2, sigmas[i + 1]))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], _model(denoiser, x_2, sigmas[i + 1]))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], _model(denoiser, x_3, sigmas[i + 2]))
            w = 3 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


def sample_dpm_2(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver-2-style midpoint steps (log-space midpoint); Euler into sigma 0."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, total, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, _model(denoiser, x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpm_2_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Ancestral DPM-2: midpoint step to sigma_down, then Gaussian noise (eta 1)."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, total, x, denoised, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, _model(denoiser, x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise.gaussian(x) * 1.0 * sigma_up
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """∫ over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (nodes t_i … t_{i-order+1}).

    The integrand is a polynomial of degree order−1, so Gauss–Legendre with ``order`` nodes is exact.
    """
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    a, b = t[i], t[i + 1]
    tau = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float(0.5 * (b - a) * np.sum(weights * basis))


def sample_lms(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """Linear multistep (Adams–Bashforth in sigma), order 4 with lower orders while warming up."""
    order = 4
    total = len(sigmas) - 1
    t = sigmas.detach().cpu().double().numpy()
    derivatives: list[Tensor] = []
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        derivatives.append(to_d(x, sigmas[i], denoised))
        if len(derivatives) > order:
            derivatives.pop(0)
        _report(callback, i, total, x, denoised, sigmas[i])
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, t, i, j) for j in range(cur_order)]
        update = None
        for coeff, d in zip(coeffs, reversed(derivatives), strict=False):
            update = coeff * d if update is None else update + coeff * d
        x = x + update
    return x


# --------------------------------------------------------------------------------------------- DPM-Solver


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


# -------------------------------------------------------------------------------------------- DPM-Solver++


def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++(2S) single-step to sigma_down plus Gaussian noise (eta 1)."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, total, x, denoised, sigmas[i])
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = _model(denoiser, x_2, _sigma_fn(s))
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise.gaussian(x) * 1.0 * sigma_up
    return x


def sample_dpmpp_sde(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++ SDE (r = 1/2, eta 1) with Brownian-tree noise at the midpoint and the end of each step."""
    if len(sigmas) <= 1:
        return x
    eta, r = 1.0, 1 / 2
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        _report(callback, i, total, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise.brownian(_sigma_fn(t), _sigma_fn(s)) * 1.0 * su
        denoised_2 = _model(denoiser, x_2, _sigma_fn(s))
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise.brownian(_sigma_fn(t), _sigma_fn(t_next)) * 1.0 * su
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++(2M): exponential-integrator multistep in data prediction."""
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        _report(callback, i, total, x, denoised, sigmas[i])
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant, eta 1, Brownian-tree noise (Fooocus's default sampler).

    With h = ln(sigma_i/sigma_{i+1}): ``x ← (σ_{i+1}/σ_i)e^{−h}x + (1−e^{−2h})D_i``, from the second step
    ``+ ½(1−e^{−2h})(h_prev/h)^{-1}(D_i − D_{i−1})``, then ``+ n_i·σ_{i+1}·sqrt(1−e^{−2h})``; into sigma 0
    simply ``x ← D_i``.
    """
    if len(sigmas) <= 1:
        return x
    eta = 1.0
    total = len(sigmas) - 1
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    h: Tensor | None = None
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        _report(callback, i, total, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = (x + noise.brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                 * (-2 * eta_h).expm1().neg().sqrt() * 1.0)
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++(3M) SDE, eta 1, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    eta = 1.0
    total = len(sigmas) - 1
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(total):
        denoised = _model(denoiser, x, sigmas[i])
        _report(callback, i, total, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            x = (x + noise.brownian(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                 * (-2 * h * eta).expm1().neg().sqrt() * 1.0)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ----------------------------------------------------------------------------------- DDPM / LCM / TCD


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


# ------------------------------------------------------------------------------------------------ Restart


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


# ------------------------------------------------------------------------------------------------- UniPC


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
