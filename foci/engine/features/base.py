"""The ``Feature`` interface: one optional capability of a generation, plugged into the recipe's steps.

A feature is selected per task (``wanted``), builds its per-image state in ``prepare`` and then takes part in
the steps through the hooks it overrides; every hook has a do-nothing default. Hooks run in the order of the
engine's feature tuple. See ``foci.engine.recipe`` for the steps and when each hook runs.

Per task, before any image, the engine asks each wanted feature (class methods, in this order):
``direct_pictures`` (a result without sampling, e.g. Upscale (Fast 2x): the task ends there), ``adjust_task``
(settings the feature implies, recorded in the metadata), ``extra_base_loras`` (patches merged into the base
UNet only, not recorded as the user's LoRAs) and, once the models are loaded, ``prepare_task`` (work shared by
all images, e.g. encoding the input image; kept in ``run.shared[feature]``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from foci.engine.denoiser import GuidanceCorrection
from foci.models.unet_patch import UnetPatch
from foci.sampling.samplers import Denoiser, StepInfo
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.engine.devices import DevicePlan
    from foci.engine.engine import Engine
    from foci.engine.recipe import FirstLatent, ImageJob, Schedule, TaskRun


class Feature(ABC):
    """Base of every feature; an instance holds one image's state (models are cached by the engine)."""

    decode_tiled: bool = False
    """Decode the final latent with Fooocus's tiled VAE decode (§2.13)."""

    # ------------------------------------------------------------------------------------- per task
    @classmethod
    def direct_pictures(cls, task: GenerationTask, engine: Engine, plan: DevicePlan) -> list[Image.Image] | None:
        """Pictures that are the task's whole result without sampling (None: sample as usual)."""
        return None

    @classmethod
    def adjust_task(cls, task: GenerationTask) -> GenerationTask:
        """The task with the settings this feature implies (e.g. the synthetic refiner's switch)."""
        return task

    @classmethod
    def extra_base_loras(cls, task: GenerationTask, engine: Engine) -> list[tuple[Path, float]]:
        """Patch files merged into the base UNet for this task, after the user's and the performance LoRAs."""
        return []

    @classmethod
    def prepare_task(cls, run: TaskRun, engine: Engine) -> Any:
        """Work shared by every image of the task (models are loaded); the result is ``run.shared[cls]``."""
        return None

    # ------------------------------------------------------------------------------------ per image

    @classmethod
    @abstractmethod
    def wanted(cls, task: GenerationTask) -> bool:
        """Whether ``task`` uses this feature."""

    @classmethod
    @abstractmethod
    def prepare(cls, job: ImageJob, engine: Engine) -> Feature:
        """The feature's state for one image (may resolve and load its models through ``engine``)."""

    def schedule(self, job: ImageJob, schedule: Schedule) -> Schedule:
        """Change the noise schedule (e.g. start part-way for a denoise strength below 1)."""
        return schedule

    def first_latent(self, job: ImageJob, schedule: Schedule, first: FirstLatent) -> FirstLatent:
        """Change where sampling starts (e.g. a VAE-encoded input image instead of the empty latent)."""
        return first

    def unet_patches(self, job: ImageJob) -> Sequence[UnetPatch]:
        """Patches attached to the UNets for the whole sampling run and detached after it."""
        return ()

    def guidance_corrections(self, job: ImageJob) -> Sequence[GuidanceCorrection]:
        """Corrections of the guided x0 after CFG, at every step."""
        return ()

    def wrap_denoiser(self, job: ImageJob, denoiser: Denoiser) -> Denoiser:
        """Wrap the ``(x, sigma) -> x0`` function the sampler calls (e.g. blend a kept region every step)."""
        return denoiser

    def on_step(self, job: ImageJob, step: StepInfo) -> None:
        """Called after every sampler step, numbered over the whole schedule."""
        return None

    def post_process(self, job: ImageJob, picture: Image.Image) -> Image.Image:
        """Change the decoded picture before it is recorded and saved (e.g. paste back, upscale)."""
        return picture
