"""Feature: Inpaint or Outpaint with the Fooocus inpaint engine (§2.12).

Once per task (``prepare_task``): the mask is assembled (upload binarised at 127, erode/dilate, invert), the image
padded for outpainting, the crop chosen by the respective field, super-resolved when small and brought to shape
ceil 1024, the hole filled (``fooocus_fill``, strength > 0.99), and both the greyed-out crop and the filled crop
VAE-encoded; the inpaint head turns ``[latent mask, inpaint latent]`` into a feature map.

Per image: sampling runs at the crop's size from the filled latent (zeros for *Modify Content*) with denoise =
strength; the head's feature is added after the UNet's input block 0 on both CFG branches; every model call sees
the known region replaced by the fill latent plus fresh noise from a (seed + 1) generator and returns x0 with that
region put back. With an engine and no refiner, Fooocus's "synthetic refiner" takes the last 20 %: the base
checkpoint without the engine patch and without the head. The decoded crop is pasted back with a ~32-pixel
feather, so pixels farther from the mask are exactly the input's.

Outpaint strength (a documented choice): Fooocus 2.5.5 meant outpainting to use strength and respective field
1.0, but its worker applies that after the values were taken, so the sliders' values are used (default method:
strength 1.0, respective field 0.618). Foci does what Fooocus 2.5.5 does; pass ``--inpaint-respective-field 1``
for the earlier behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from foci.engine.features.base import Feature
from foci.engine.features.vary_upscale import to_pixels, with_denoise
from foci.engine.outcomes import GenerationError
from foci.engine.output import encode_pixels
from foci.imaging.blend import grey_out_masked, latent_mask, mask_to_tensor, paste_back, soft_mask
from foci.imaging.crop import InpaintCrop, prepare_inpaint_crop
from foci.imaging.masks import MaskError, assemble_mask, has_inpaint_work, outpaint
from foci.models.unet_patch import UnetPatch
from foci.sampling.samplers import Denoiser, StepInfo
from foci.task import INPAINT_MODIFY, GenerationTask

if TYPE_CHECKING:
    from foci.engine.devices import DevicePlan
    from foci.engine.engine import Engine
    from foci.engine.recipe import FirstLatent, ImageJob, Schedule, TaskRun

ENGINE_PATCHES = {"v1": "inpaint.fooocus.patch", "v2.5": "inpaint_v25.fooocus.patch",
                  "v2.6": "inpaint_v26.fooocus.patch"}
SYNTHETIC_REFINER_SWITCH = 0.8
ENERGY_SEED_MODULUS = 2**63 - 1  # Fooocus's MAX_SEED; the energy generator is seeded (seed + 1) mod this


@dataclass(frozen=True)
class PreparedInpaint:
    """The task's inpaint inputs: the padded image and mask, the crop and its latents (VAE space, CPU float32)."""

    image: np.ndarray  # after outpaint padding, uint8 (H, W, 3)
    mask: np.ndarray  # after outpaint padding, uint8 (H, W), 255 = repaint
    crop: InpaintCrop
    latent_fill: torch.Tensor
    latent_inpaint: torch.Tensor
    latent_mask: torch.Tensor  # (1, 1, h, w), 1 = repaint
    head_feature: torch.Tensor | None  # (1, C, h, w) for the UNet, or None without an engine


def uses_engine(task: GenerationTask) -> bool:
    """Whether the task uses an inpaint engine (head + patch), i.e. its engine is not ``None``."""
    return task.effective_inpaint_engine != "None"


def padded_image_and_mask(task: GenerationTask, engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    """The input image (RGB) and the assembled mask, both padded for the task's outpaint directions (§2.12 1–2)."""
    image = engine.input_rgb(task.input_image)
    height, width = image.shape[:2]
    uploaded = engine.input_mask(task.inpaint_mask) if task.inpaint_mask is not None else None
    try:
        mask = assemble_mask(height, width, uploaded=uploaded, grow=task.mask_dilate, invert=task.invert_mask)
        if task.outpaint:
            image, mask = outpaint(image, mask, task.outpaint)
    except MaskError as error:
        raise GenerationError(str(error)) from None
    if not has_inpaint_work(mask, task.outpaint):
        raise GenerationError("the inpaint mask is empty: paint (white) the area to repaint, or choose an outpaint "
                              "direction")
    return image, mask


def inpaint_crop(task: GenerationTask, engine: Engine, plan: DevicePlan, image: np.ndarray,
                 mask: np.ndarray) -> InpaintCrop:
    """The crop the sampler works on (§2.12 3–5); the ESRGAN is loaded only when the crop is small."""
    return prepare_inpaint_crop(image, mask, field=task.effective_respective_field,
                                use_fill=task.effective_inpaint_strength > 0.99,
                                upscale=lambda crop: engine.upscaler(plan, task.upscale_model).upscale(crop))


class InpaintHeadPatch(UnetPatch):
    """Adds the inpaint head's feature to the output of the UNet's input block 0 (``conv_in``), every call."""

    def __init__(self, unet: nn.Module, feature: torch.Tensor) -> None:
        super().__init__(unet)
        self.feature = feature

    def _install(self) -> list:
        def add_feature(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + self.feature.to(output)

        return [self.unet.conv_in.register_forward_hook(add_feature).remove]


class InpaintBlend:
    """Wraps the denoiser: the known region is the fill latent (plus noise at σ before the call), every step."""

    def __init__(self, denoiser: Denoiser, fill: torch.Tensor, mask: torch.Tensor, seed: int) -> None:
        self.denoiser = denoiser
        self.fill = fill
        self.mask = mask
        self.energy = torch.Generator("cpu").manual_seed((seed + 1) % ENERGY_SEED_MODULUS)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        fill, mask = self.fill.to(x), self.mask.to(x)
        noise = torch.randn(x.shape, dtype=x.dtype, generator=self.energy, device="cpu").to(x)
        energy = noise * sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)
        x = x * mask + (fill + energy) * (1.0 - mask)
        x0 = self.denoiser(x, sigma)
        return x0 * mask + fill * (1.0 - mask)


class InpaintFeature(Feature):
    """Inpaints (or outpaints) the input image's masked region; see the module docstring."""

    def __init__(self, prepared: PreparedInpaint, head: InpaintHeadPatch | None, synthetic_switch: int | None,
                 engine: Engine) -> None:
        self.prepared = prepared
        self.head = head
        self.synthetic_switch = synthetic_switch
        self.engine = engine

    @classmethod
    def wanted(cls, task: GenerationTask) -> bool:
        return task.input_mode == "inpaint"

    @classmethod
    def direct_pictures(cls, task: GenerationTask, engine: Engine, plan: DevicePlan) -> list[Image.Image] | None:
        if not task.debug_inpaint:
            return None
        crop = inpaint_crop(task, engine, plan, *padded_image_and_mask(task, engine))
        return [Image.fromarray(crop.fill), Image.fromarray(crop.mask), Image.fromarray(crop.image)]

    @classmethod
    def adjust_task(cls, task: GenerationTask) -> GenerationTask:
        if uses_engine(task) and synthetic_refiner(task):
            return task.model_copy(update={"refiner_switch": SYNTHETIC_REFINER_SWITCH})
        return task

    @classmethod
    def extra_base_loras(cls, task: GenerationTask, engine: Engine) -> list[tuple[Path, float]]:
        if not uses_engine(task):
            return []
        name = ENGINE_PATCHES[task.effective_inpaint_engine]
        return [(engine.resolve("inpaint", name, "inpaint engine patch"), 1.0)]

    @classmethod
    def prepare_task(cls, run: TaskRun, engine: Engine) -> PreparedInpaint:
        task, plan, base = run.task, run.plan, run.base
        if task.effective_inpaint_strength <= 0:
            raise GenerationError("inpaint strength must be above 0")
        image, mask = padded_image_and_mask(task, engine)
        crop = inpaint_crop(task, engine, plan, image, mask)
        engine.place(plan, [base.components.vae])
        pixel_mask = mask_to_tensor(crop.mask)
        latent_fill = encode_pixels(base, to_pixels(crop.fill), plan)
        latent_inpaint = encode_pixels(base, grey_out_masked(to_pixels(crop.image), pixel_mask), plan)
        cells = latent_mask(pixel_mask, latent_inpaint.shape[-2], latent_inpaint.shape[-1])
        head_feature = None
        if uses_engine(task):
            unet = base.components.unet
            head = engine.inpaint_head(int(unet.conv_in.out_channels))
            latent_format = base.components.info.latent_format
            head_feature = head.features(cells, latent_format.to_unet(latent_inpaint))
        return PreparedInpaint(image, mask, crop, latent_fill, latent_inpaint, cells, head_feature)

    @classmethod
    def prepare(cls, job: ImageJob, engine: Engine) -> InpaintFeature:
        prepared: PreparedInpaint = job.run.shared[cls]
        height, width = prepared.crop.image.shape[:2]
        job.size = (width, height)
        head = None
        if prepared.head_feature is not None:
            head = InpaintHeadPatch(job.run.base.components.unet, prepared.head_feature.to(job.device))
        switch = None
        if head is not None and synthetic_refiner(job.task):
            switch = job.task.switch_step
            engine.use_loras(job.run.base, job.run.base_loras)  # the previous image ended without the patch
        return cls(prepared, head, switch, engine)

    def schedule(self, job: ImageJob, schedule: Schedule) -> Schedule:
        return with_denoise(job.task, schedule, job.task.effective_inpaint_strength)

    def first_latent(self, job: ImageJob, schedule: Schedule, first: FirstLatent) -> FirstLatent:
        if job.task.inpaint_method != INPAINT_MODIFY:
            latent_format = job.run.base.components.info.latent_format
            first.latent = latent_format.to_unet(self.prepared.latent_fill).to(first.latent)
        return first

    def unet_patches(self, job: ImageJob) -> Sequence[UnetPatch]:
        return (self.head,) if self.head is not None else ()

    def wrap_denoiser(self, job: ImageJob, denoiser: Denoiser) -> Denoiser:
        latent_format = job.run.base.components.info.latent_format
        fill = latent_format.to_unet(self.prepared.latent_fill).to(job.device)
        return InpaintBlend(denoiser, fill, self.prepared.latent_mask.to(job.device), job.seed)

    def on_step(self, job: ImageJob, step: StepInfo) -> None:
        if self.synthetic_switch is not None and step.index == self.synthetic_switch:
            # Fooocus's synthetic refiner: the base checkpoint without the engine patch and without the head
            self.head.detach()
            self.engine.use_loras(job.run.base, job.run.base_loras_without_patches)

    def post_process(self, job: ImageJob, picture: Image.Image) -> Image.Image:
        prepared = self.prepared
        decoded = np.asarray(picture.convert("RGB"))
        return Image.fromarray(paste_back(prepared.image, decoded, prepared.crop.box, soft_mask(prepared.mask)))


def synthetic_refiner(task: GenerationTask) -> bool:
    """Whether Fooocus would add its synthetic refiner: an inpaint engine and no refiner of the user's."""
    return uses_engine(task) and (not task.refiner_model or task.refiner_model in ("None", task.base_model))
