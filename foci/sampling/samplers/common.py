"""What every sampler shares: the denoiser and step-report types, and k-diffusion's small step helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from foci.sampling.names import SAMPLERS

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
