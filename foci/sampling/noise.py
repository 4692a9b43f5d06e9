"""Noise sources for the samplers: one Brownian tree per image plus a plain Gaussian stream (§2.7)."""

from __future__ import annotations

import torch
import torchsde
from torch import Tensor


class NoiseSource:
    """The two kinds of sampler noise of one image.

    ``brownian`` serves every SDE sampler from a single ``torchsde.BrownianTree`` spanning
    ``[sigma_min, sigma_max]`` with entropy ``seed``, built on ``like.device`` with ``like``'s dtype, as
    Fooocus does once per image. ``gaussian`` draws ``torch.randn`` from ``generator`` (ancestral samplers,
    lcm, tcd, ddpm, restart, heunpp2 and the DPM-Solver noise hooks).
    """

    def __init__(
        self, like: Tensor, *, seed: int, sigma_min: float, sigma_max: float, generator: torch.Generator
    ) -> None:
        self.seed = seed
        self.generator = generator
        # Fooocus builds the tree from torch.as_tensor(python float): float32 0-dim end points.
        t0 = torch.as_tensor(sigma_min, dtype=torch.float32)
        t1 = torch.as_tensor(sigma_max, dtype=torch.float32)
        self._sign = 1 if t0 < t1 else -1
        if self._sign < 0:
            t0, t1 = t1, t0
        w0 = torch.zeros_like(like)
        self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    def brownian(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """Unit-variance Brownian increment ``W(sigma → sigma_next) / sqrt(|sigma_next − sigma|)``."""
        start = torch.as_tensor(sigma)
        end = torch.as_tensor(sigma_next)
        if start < end:
            low, high, sign = start, end, 1
        else:
            low, high, sign = end, start, -1
        increment = self._tree(low, high) * (self._sign * sign)
        return increment / (end - start).abs().sqrt()

    def gaussian(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like``, continuing ``generator``'s stream."""
        device = self.generator.device
        noise = torch.randn(like.shape, dtype=like.dtype, device=device, generator=self.generator)
        return noise.to(like.device)
