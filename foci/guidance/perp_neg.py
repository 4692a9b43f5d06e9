"""Perp-Neg guidance (Armandpour et al. 2023) as ComfyUI's ``PerpNeg`` node computes it.

Only the component of the negative direction perpendicular to the positive direction (both relative to the
empty-prompt prediction) is subtracted, so a negative prompt that overlaps the positive one cannot cancel
it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def perp_neg_guidance(x: Tensor, x0_positive: Tensor, x0_negative: Tensor, x0_empty: Tensor, *,
                      cfg_scale: float, neg_scale: float) -> Tensor:
    """Guided x0 with Perp-Neg.

    In eps form: ``pos = eps+ − eps∅``, ``neg = eps− − eps∅``, ``perp = neg − (⟨neg,pos⟩/‖pos‖²)·pos`` (sums
    over all dimensions, batch included), ``eps = eps∅ + cfg·(pos − neg_scale·perp)``; returns ``x − eps``.
    Because every eps is ``x − x0`` with the same ``x``, this is computed on the x0 predictions directly, as
    ComfyUI does: the result is ``x0∅ + cfg·(pos − neg_scale·perp)`` with x0 differences (``x`` is accepted
    for API symmetry).
    """
    del x  # the x terms cancel exactly in the algebra above
    pos = x0_positive - x0_empty
    neg = x0_negative - x0_empty
    perp = neg - (torch.mul(neg, pos).sum() / (torch.norm(pos) ** 2)) * pos
    perp_neg = perp * neg_scale
    return x0_empty + cfg_scale * (pos - perp_neg)
