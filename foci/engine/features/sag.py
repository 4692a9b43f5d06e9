"""Feature: Self-Attention Guidance on the base UNet, when the task's ``sag_scale`` is above 0.

It patches the base UNet to record its mid-block self-attention and corrects the guided x0 of the base stage
after CFG (the refiner's UNet carries no recording, so its steps are left alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from foci.engine.denoiser import DenoiseStage, GuidanceCorrection
from foci.engine.features.base import Feature
from foci.guidance.sag import SelfAttentionGuidance
from foci.models.unet_patch import UnetPatch
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.engine.recipe import ImageJob


class SagFeature(Feature):
    """SAG at the task's scale; the UNet batches [positive, negative], so the unconditional chunk is 1."""

    def __init__(self, sag: SelfAttentionGuidance) -> None:
        self.sag = sag

    @classmethod
    def wanted(cls, task: GenerationTask) -> bool:
        return task.sag_scale > 0

    @classmethod
    def prepare(cls, job: ImageJob, engine: Engine) -> SagFeature:
        return cls(SelfAttentionGuidance(job.run.base.components.unet, scale=job.task.sag_scale, uncond_index=1))

    def unet_patches(self, job: ImageJob) -> Sequence[UnetPatch]:
        return (self.sag,)

    def guidance_corrections(self, job: ImageJob) -> Sequence[GuidanceCorrection]:
        return (self,)

    def correct(self, stage: DenoiseStage, *, x: torch.Tensor, sigma: torch.Tensor, x0_uncond: torch.Tensor,
                x0_guided: torch.Tensor, evaluate_uncond: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """SAG's correction on the stage of the patched UNet; other stages pass unchanged."""
        if stage.unet is not self.sag.unet:
            return x0_guided
        return self.sag.apply(x=x, sigma=sigma, x0_uncond=x0_uncond, x0_guided=x0_guided,
                              evaluate_uncond=evaluate_uncond)
