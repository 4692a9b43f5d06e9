"""DPM-Solver++: single-step ancestral and SDE, and the 2M, 2M SDE and 3M SDE multistep samplers."""

from __future__ import annotations

import torch
from torch import Tensor

from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import (
    Denoiser,
    StepCallback,
    _model,
    _report,
    _sigma_fn,
    _t_fn,
    ancestral_step,
    to_d,
)


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
