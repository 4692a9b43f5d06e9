"""Recipe step "conditioning": each image's prompts encoded once, then shaped for the base and refiner UNets.

SDXL conditioning is the text encoders' output plus size/crop "time ids" (ADM); Fooocus emphasises the size
early in sampling and switches to the consistent ids late (§2.9). An SDXL refiner instead sees the CLIP-G part,
the pooled vector and aesthetic scores (§2.10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from foci.engine.denoiser import BranchConditioning, DenoiseStage
from foci.engine.loaded import LoadedModel
from foci.guidance.adm import refiner_time_ids, sdxl_size_time_ids
from foci.sampling.model_sampling import ModelSampling
from foci.task import GenerationTask
from foci.text.encoder import EncodedPrompt, PromptEncoder
from foci.text.prompt_plan import ImagePrompts
from foci.text.prompts import PromptPlan

REFINER_AESTHETIC_POSITIVE = 6.0
REFINER_AESTHETIC_NEGATIVE = 2.5


@dataclass
class ImageConditioning:
    """One image's seed, the prompt items it used and their encodings (``empty`` only for Perp-Neg)."""

    seed: int
    prompts: PromptPlan
    positive: EncodedPrompt
    negative: EncodedPrompt
    empty: EncodedPrompt | None = None
    logged_prompt: str | None = None
    """The positive text as Fooocus logs it (see :attr:`foci.text.prompt_plan.ImagePrompts.log_positive`)."""
    logged_negative_prompt: str | None = None


def encode_image_prompts(task: GenerationTask, encoder: PromptEncoder, prompts: ImagePrompts) -> ImageConditioning:
    """Encode one image's planned prompts; at CFG 1 the negative is a copy of the positive (never used)."""
    plan = prompts.to_prompt_plan()
    positive = encoder.encode(plan.positive, plan.positive_top_k)
    if math.isclose(task.guidance_scale, 1.0):
        negative = EncodedPrompt(positive.cond.clone(), positive.pooled.clone())
    else:
        negative = encoder.encode(plan.negative, plan.negative_top_k)
    empty = encoder.encode([""], 1) if task.perp_neg_scale > 0 else None
    return ImageConditioning(prompts.seed, plan, positive, negative, empty, logged_prompt=prompts.log_positive,
                             logged_negative_prompt=prompts.log_negative)


def base_stage(task: GenerationTask, base: LoadedModel, sampling: ModelSampling, image: ImageConditioning,
               size: tuple[int, int], device: torch.device) -> DenoiseStage:
    """The base UNet with both CFG branches under timed ADM emphasis (and the empty prompt for Perp-Neg)."""
    width, height = size

    def branch(encoded: EncodedPrompt, scale: float) -> BranchConditioning:
        emphasized, consistent = sdxl_size_time_ids(width, height, scale=scale)
        return BranchConditioning(
            cond=encoded.cond.to(device), pooled=encoded.pooled.to(device),
            time_ids=torch.tensor([emphasized], dtype=torch.float32, device=device),
            time_ids_late=torch.tensor([consistent], dtype=torch.float32, device=device))

    empty = branch(image.empty, 1.0) if image.empty is not None else None
    return DenoiseStage(base.components.unet, sampling,
                        branch(image.positive, task.adm_scaler_positive),
                        branch(image.negative, task.adm_scaler_negative), empty, name="base")


def refiner_stage(task: GenerationTask, refiner: LoadedModel, sampling: ModelSampling, image: ImageConditioning,
                  size: tuple[int, int], device: torch.device) -> DenoiseStage:
    """Refiner conditioning (§2.10): an SDXL refiner gets the CLIP-G slice + pooled with aesthetic scores
    6.0/2.5; another SDXL model gets the full conds and the same timed ADM emphasis as the base."""
    if refiner.components.info.kind != "sdxl_refiner":
        stage = base_stage(task, refiner, sampling, image, size, device)
        stage.empty, stage.name = None, "refiner"
        return stage
    width, height = size
    unet = refiner.components.unet
    context_dim = unet.config.cross_attention_dim

    def branch(encoded: EncodedPrompt, score: float) -> BranchConditioning:
        ids = refiner_time_ids(width, height, aesthetic_score=score)
        return BranchConditioning(cond=encoded.cond[..., -context_dim:].to(device),
                                  pooled=encoded.pooled.to(device),
                                  time_ids=torch.tensor([ids], dtype=torch.float32, device=device))

    return DenoiseStage(unet, sampling, branch(image.positive, REFINER_AESTHETIC_POSITIVE),
                        branch(image.negative, REFINER_AESTHETIC_NEGATIVE), name="refiner")
