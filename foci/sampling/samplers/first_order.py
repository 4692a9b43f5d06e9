"""Euler and Heun-type samplers (plain and ancestral), DPM-2 and LMS."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from foci.sampling.noise import NoiseSource
from foci.sampling.samplers.common import Denoiser, StepCallback, _model, _report, ancestral_step, to_d


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
