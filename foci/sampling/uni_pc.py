"""UniPC multistep sampler (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), §2.7.

The solver runs in variance-preserving scaling with sigma itself as the time variable, data prediction,
order 3 with lower orders at the start and at the end, and the B(h) variants bh1 (B = h) and bh2
(B = e^h − 1). A final sigma of 0 is replaced by 0.001 and the result is rescaled back to the
k-diffusion convention at that sigma. One model evaluation per step; the last step is predictor-only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

StepHook = Callable[[int, int, Tensor, Tensor, Tensor], None]  # (index, total, x, denoised, sigma)


def _log_alpha(sigma: Tensor) -> Tensor:
    """log of the VP signal scale alpha for Karras sigma: ``0.5·log(1/(σ²+1))``."""
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: Tensor) -> Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: Tensor) -> Tensor:
    """Half log-SNR ``log alpha − log std``."""
    log_alpha = _log_alpha(sigma)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
    return log_alpha - log_std


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v[(...,) + (None,) * (like.dim() - 1)]


class _UniPC:
    """Data-prediction UniPC with the B(h) coefficient families."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], variant: str) -> None:
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
        self.denoiser = denoiser
        self.variant = variant

    def data_prediction(self, x_vp: Tensor, sigma: Tensor) -> Tensor:
        """x0 from the VP-scaled state via the eps the denoiser implies (round trip kept for fidelity)."""
        sigma_b = _bcast(sigma, x_vp)
        x_k = x_vp * ((sigma_b**2 + 1.0) ** 0.5)
        eps = (x_k - self.denoiser(x_k, sigma)) / sigma_b
        return (x_vp - _bcast(_std(sigma), x_vp) * eps) / _bcast(_alpha(sigma), x_vp)

    def update(
        self,
        x: Tensor,
        model_prev: list[Tensor],
        t_prev: list[Tensor],
        t: Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """One multistep predictor(-corrector) step from ``t_prev[-1]`` to ``t``."""
        t_prev_0 = t_prev[-1]
        lambda_prev_0 = _lambda(t_prev_0)
        lambda_t = _lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks: list[Tensor] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            lambda_prev_i = _lambda(t_prev[-(i + 1)])
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(torch.ones((), dtype=h.dtype, device=h.device))
        rks_t = torch.stack(rks)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows: list[Tensor] = []
        b_list: list[Tensor] = []
        factorial_i = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b_list.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat = torch.stack(rows)
        b_vec = torch.stack(b_list)

        d1s_t: Tensor | None = torch.stack(d1s, dim=1) if d1s else None
        rhos_p: Tensor | None = None
        if d1s_t is not None:
            if order == 2:
                rhos_p = torch.tensor([0.5], dtype=b_vec.dtype, device=b_vec.device)
            else:
                rhos_p = torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        rhos_c: Tensor | None = None
        if use_corrector:
            if order == 1:
                rhos_c = torch.tensor([0.5], dtype=b_vec.dtype, device=b_vec.device)
            else:
                rhos_c = torch.linalg.solve(r_mat, b_vec)

        x_t_ = _bcast(sigma_t / sigma_prev_0, x) * x - _bcast(alpha_t * h_phi_1, x) * model_prev_0
        if d1s_t is not None and rhos_p is not None:
            x_t = x_t_ - _bcast(alpha_t * b_h, x) * torch.einsum("k,bkchw->bchw", rhos_p, d1s_t)
        else:
            x_t = x_t_

        model_t: Tensor | None = None
        if use_corrector and rhos_c is not None:
            model_t = self.data_prediction(x_t, t)
            d1_t = model_t - model_prev_0
            if d1s_t is not None:
                corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s_t)
                x_t = x_t_ - _bcast(alpha_t * b_h, x) * (corr_res + rhos_c[-1] * d1_t)
            else:
                x_t = x_t_ - _bcast(alpha_t * b_h, x) * (0 + rhos_c[-1] * d1_t)
        return x_t, model_t


def sample_unipc(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    on_step: StepHook | None = None,
    variant: str = "bh1",
) -> Tensor:
    """UniPC multistep from ``x`` (k-diffusion scaling at ``sigmas[0]``) down ``sigmas``.

    ``on_step(index, total, x, denoised, sigma)`` runs once per step with ``x`` in k-diffusion scaling.
    """
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    solver = _UniPC(denoiser, variant)
    batch = x.shape[0]
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = min(3, len(timesteps) - 2)
    steps = len(timesteps) - 1
    model_prev: list[Tensor] = []
    t_prev: list[Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            vec_t = timesteps[0].expand(batch)
            model_prev = [solver.data_prediction(x, vec_t)]
            t_prev = [vec_t]
            reached = vec_t
        elif step_index < order:
            vec_t = timesteps[step_index].expand(batch)
            x, model_x = solver.update(x, model_prev, t_prev, vec_t, step_index, use_corrector=True)
            if model_x is None:
                model_x = solver.data_prediction(x, vec_t)
            model_prev.append(model_x)
            t_prev.append(vec_t)
            reached = vec_t
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                vec_t = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                use_corrector = step != steps
                x, model_x = solver.update(x, model_prev, t_prev, vec_t, step_order, use_corrector)
                for i in range(order - 1):
                    t_prev[i] = t_prev[i + 1]
                    model_prev[i] = model_prev[i + 1]
                t_prev[-1] = vec_t
                if step < steps:
                    if model_x is None:
                        model_x = solver.data_prediction(x, vec_t)
                    model_prev[-1] = model_x
                reached = vec_t
        if on_step is not None:
            sigma_eval = timesteps[step_index]
            on_step(step_index, steps, x / _bcast(_alpha(reached), x), model_prev[-1], sigma_eval)
    return x / _alpha(timesteps[-1])
