"""The UnetPatch interface: idempotent attach/detach, undo in reverse order, detach on errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foci.guidance.freeu import FreeU
from foci.guidance.sag import SelfAttentionGuidance
from foci.models.unet_patch import Undo, UnetPatch, add_pre_hook


class _Logged(UnetPatch):
    def __init__(self, unet: nn.Module, log: list[str]) -> None:
        super().__init__(unet)
        self.log = log

    def _install(self) -> list[Undo]:
        self.log.append("install")
        return [lambda: self.log.append("undo first"), lambda: self.log.append("undo second")]


def test_attach_is_idempotent_and_detach_undoes_in_reverse_order() -> None:
    log: list[str] = []
    patch = _Logged(nn.Identity(), log)
    patch.detach()  # not attached: nothing to undo
    assert not patch.attached and log == []
    patch.attach()
    patch.attach()
    assert patch.attached and log == ["install"]
    patch.detach()
    patch.detach()
    assert not patch.attached and log == ["install", "undo second", "undo first"]


def test_context_manager_detaches_when_the_block_raises() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError), _Logged(nn.Identity(), log) as patch:
        assert patch.attached
        raise RuntimeError("sampling failed")
    assert not patch.attached and log[-1] == "undo first"


def test_add_pre_hook_changes_the_input_until_undone() -> None:
    layer = nn.Linear(2, 2)

    class Doubling(UnetPatch):
        def _install(self) -> list[Undo]:
            return [add_pre_hook(self.unet, lambda module, args, kwargs: ((args[0] * 2,), kwargs))]

    x = torch.ones(1, 2)
    before, doubled = layer(x), layer(2 * x)
    with Doubling(layer):
        assert torch.equal(layer(x), doubled)
    assert torch.equal(layer(x), before)


def test_freeu_and_sag_are_unet_patches() -> None:
    assert issubclass(FreeU, UnetPatch) and issubclass(SelfAttentionGuidance, UnetPatch)
