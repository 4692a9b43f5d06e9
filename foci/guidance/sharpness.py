"""Fooocus "sharpness": an anisotropic (joint bilateral) filter on the positive eps (§2.8 step 3).

The filter is kornia's bilateral blur with ``color_distance_type="l1"``: a 13×13 Gaussian space kernel (σ 3)
times a colour kernel ``exp(-0.5·(Σ_c |Δguide|)² / 3²)`` evaluated on a guide image, reflect padding, and
the weighted mean ``Σ w·x / Σ w``. The guide is standardised per sample first. All arithmetic stays in the
input dtype, in the same order as the reference, so float32 results agree to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL_SIZE = 13
SIGMA_SPACE = 3.0
SIGMA_COLOR = 3.0
GUIDE_STD_EPS = 1e-5


def gaussian_kernel_1d(size: int, sigma: float, *, dtype: torch.dtype,
                       device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian ``exp(-x²/(2σ²))`` on ``x = arange(size) - size // 2`` (+0.5 if even)."""
    sigma_t = torch.tensor([[sigma]], dtype=torch.float32).to(device=device, dtype=dtype)
    offsets = torch.arange(size, device=device, dtype=dtype) - size // 2
    if size % 2 == 0:
        offsets = offsets + 0.5
    weights = torch.exp(-offsets.pow(2.0) / (2 * sigma_t.pow(2.0)))
    return (weights / weights.sum(-1, keepdim=True))[0]


def gaussian_kernel_2d(size: int, sigma: float, *, dtype: torch.dtype,
                       device: torch.device | None = None) -> Tensor:
    """Separable 2-D Gaussian: outer product of two :func:`gaussian_kernel_1d`, shape ``[size, size]``."""
    k1 = gaussian_kernel_1d(size, sigma, dtype=dtype, device=device)
    return k1[:, None] * k1[None, :]


def _windows(t: Tensor, size: int) -> Tensor:
    """Reflect-pad ``[B, C, H, W]``; return every ``size×size`` neighbourhood as ``[B, C, H, W, size²]``."""
    half = (size - 1) // 2
    padded = F.pad(t, (half, half, half, half), mode="reflect")
    return padded.unfold(2, size, 1).unfold(3, size, 1).flatten(-2)


def joint_bilateral_blur(
    x: Tensor, guide: Tensor, *, kernel_size: int = KERNEL_SIZE, sigma_space: float = SIGMA_SPACE,
    sigma_color: float = SIGMA_COLOR,
) -> Tensor:
    """Joint bilateral blur of ``x`` steered by ``guide`` (L1 colour distance over channels, reflect)."""
    if x.shape != guide.shape:
        raise ValueError(f"x {tuple(x.shape)} and guide {tuple(guide.shape)} must have the same shape")
    x_win = _windows(x, kernel_size)
    guide_win = _windows(guide, kernel_size)
    delta = guide_win - guide.unsqueeze(-1)
    color_distance_sq = delta.abs().sum(1, keepdim=True).square()
    color_weight = (-0.5 / sigma_color**2 * color_distance_sq).exp()
    space_weight = gaussian_kernel_2d(kernel_size, sigma_space, dtype=x.dtype, device=x.device)
    weight = space_weight.reshape(1, 1, 1, 1, kernel_size * kernel_size) * color_weight
    return (x_win * weight).sum(-1) / weight.sum(-1)


def anisotropic_filter(x: Tensor, guide: Tensor) -> Tensor:
    """Fooocus' adaptive anisotropic filter: joint bilateral blur of ``x`` on a standardised ``guide``.

    The guide is normalised by ``torch.std_mean`` over (C, H, W) (unbiased std, plus 1e-5).
    """
    std, mean = torch.std_mean(guide, dim=(1, 2, 3), keepdim=True)
    std = std + GUIDE_STD_EPS
    return joint_bilateral_blur(x, (guide - mean) / std)
