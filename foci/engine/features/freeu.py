"""Feature: FreeU V2 (§2.19) on the base UNet while sampling, when the task enables it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from foci.engine.features.base import Feature
from foci.guidance.freeu import FreeU
from foci.models.unet_patch import UnetPatch
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.engine.recipe import ImageJob


class FreeUFeature(Feature):
    """Re-weights the base UNet's backbone and skip features with the task's b1, b2, s1, s2."""

    def __init__(self, patch: FreeU) -> None:
        self.patch = patch

    @classmethod
    def wanted(cls, task: GenerationTask) -> bool:
        return task.freeu.enabled

    @classmethod
    def prepare(cls, job: ImageJob, engine: Engine) -> FreeUFeature:
        scales = job.task.freeu
        return cls(FreeU(job.run.base.components.unet, b1=scales.b1, b2=scales.b2, s1=scales.s1, s2=scales.s2))

    def unet_patches(self, job: ImageJob) -> Sequence[UnetPatch]:
        return (self.patch,)
