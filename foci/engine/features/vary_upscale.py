"""Feature: Upscale or Variation (§2.13) — the input image, VAE-encoded, is where sampling starts.

* Vary (Subtle / Strong): the image at a shape ceil clamped into [1024, 2048], encoded untiled; denoise 0.5 / 0.85.
* Upscale (1.5x / 2x): Fooocus's ESRGAN, resized to 1.5× / 2× (or shape ceil 1024 when smaller); encoded and
  decoded with Fooocus's tiles; denoise 0.382 at the performance's Upscale step count (``apply_performance``).
* Upscale (Fast 2x), or a target shape ceil above 2800: the resized super-resolution image is the result.

The output has the encoded size. Sampling starts from the encoded latent plus noise at the first sigma of the
truncated schedule (§2.6), the Brownian tree spanning that truncated range.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from foci.engine.features.base import Feature
from foci.engine.output import encode_pixels, vae_encode_crop
from foci.imaging.crop import plan_upscale, resize_upscaled, uov_strength, vary_image
from foci.sampling.schedulers import compute_sigmas
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.engine.devices import DevicePlan
    from foci.engine.engine import Engine
    from foci.engine.recipe import FirstLatent, ImageJob, Schedule, TaskRun


def _is_upscale(task: GenerationTask) -> bool:
    return task.uov_method.startswith("Upscale")


def upscaled(image: np.ndarray, task: GenerationTask, engine: Engine, plan: DevicePlan) -> np.ndarray:
    """``image`` super-resolved by the task's upscaler and resized by the Upscale rules (§2.13)."""
    rules = plan_upscale(image.shape[0], image.shape[1], task.uov_method)
    return resize_upscaled(engine.upscaler(plan, task.upscale_model).upscale(image), rules)


def to_pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` → float32 ``(1, 3, H, W)`` in 0…1."""
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


@dataclass(frozen=True)
class EncodedInput:
    """The input image as the first latent: VAE-space latent (CPU float32), its size and the denoise."""

    latent: torch.Tensor
    size: tuple[int, int]  # width, height in pixels
    denoise: float
    tiled: bool


class UpscaleOrVaryFeature(Feature):
    """Starts sampling from the encoded input image with the method's denoise."""

    def __init__(self, encoded: EncodedInput) -> None:
        self.encoded = encoded
        self.decode_tiled = encoded.tiled

    @classmethod
    def wanted(cls, task: GenerationTask) -> bool:
        return task.input_mode == "uov"

    @classmethod
    def direct_pictures(cls, task: GenerationTask, engine: Engine, plan: DevicePlan) -> list[Image.Image] | None:
        if not _is_upscale(task):
            return None
        width, height = engine.input_size(task.input_image)  # the header is enough to decide (shape ceil)
        if not plan_upscale(height, width, task.uov_method).direct_return:
            return None
        return [Image.fromarray(upscaled(engine.input_rgb(task.input_image), task, engine, plan))]

    @classmethod
    def prepare_task(cls, run: TaskRun, engine: Engine) -> EncodedInput:
        task, plan = run.task, run.plan
        tiled = _is_upscale(task)
        image = engine.input_rgb(task.input_image)
        image = upscaled(image, task, engine, plan) if tiled else vary_image(image)
        pixels = vae_encode_crop(to_pixels(image))
        engine.place(plan, [run.base.components.vae])
        latent = encode_pixels(run.base, pixels, plan, tiled=tiled)
        denoise = uov_strength(task.uov_method, overwrite_vary=task.overwrite_vary_strength,
                               overwrite_upscale=task.overwrite_upscale_strength)
        return EncodedInput(latent, (pixels.shape[-1], pixels.shape[-2]), denoise, tiled)

    @classmethod
    def prepare(cls, job: ImageJob, engine: Engine) -> UpscaleOrVaryFeature:
        encoded: EncodedInput = job.run.shared[cls]
        job.size = encoded.size
        return cls(encoded)

    def schedule(self, job: ImageJob, schedule: Schedule) -> Schedule:
        return with_denoise(job.task, schedule, self.encoded.denoise)

    def first_latent(self, job: ImageJob, schedule: Schedule, first: FirstLatent) -> FirstLatent:
        latent_format = job.run.base.components.info.latent_format
        first.latent = latent_format.to_unet(self.encoded.latent).to(first.latent)
        return first


def with_denoise(task: GenerationTask, schedule: Schedule, denoise: float) -> Schedule:
    """``schedule`` recomputed for a partial ``denoise`` (the last steps+1 sigmas of a longer schedule, §2.6)."""
    if denoise > 0.9999:
        return schedule
    sigmas = compute_sigmas(schedule.sampling, schedule.scheduler, task.effective_steps, sampler=task.sampler,
                            denoise=denoise).to(schedule.sigmas.device)
    return replace(schedule, sigmas=sigmas, denoise=denoise)
