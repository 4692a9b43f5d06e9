"""The Fooocus denoiser: one model evaluation per step with CFG, sharpness, ADM switching and add-ons.

A ``GuidedDenoiser`` turns (x, sigma) into the guided x0 that the samplers consume. It holds the current
``DenoiseStage`` (UNet + model sampling + conditioning); the joint refiner swap replaces that stage from the
sampler callback, so solver history and the Brownian tree carry over (§2.10). ``GuidanceCorrection``s (SAG
today) adjust the guided x0 after CFG and may evaluate the unconditional branch once more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from foci.guidance.adm import use_emphasized_adm
from foci.guidance.cfg import fooocus_guidance, guidance_progress
from foci.guidance.perp_neg import perp_neg_guidance
from foci.sampling.model_sampling import ModelSampling


@dataclass
class BranchConditioning:
    """Conditioning of one CFG branch for one UNet.

    ``time_ids`` is used at every step; ``time_ids_late`` (if given) replaces it once the timestep drops to
    ``999·(1 − adm_scaler_end)`` or below — Fooocus's timed ADM emphasis (§2.9).
    """

    cond: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    time_ids_late: torch.Tensor | None = None


@dataclass
class DenoiseStage:
    """A UNet with its model sampling and the branches it is conditioned on."""

    unet: torch.nn.Module
    sampling: ModelSampling
    positive: BranchConditioning
    negative: BranchConditioning
    empty: BranchConditioning | None = None  # only for Perp-Neg
    name: str = "base"


@dataclass
class GuidanceSettings:
    """The per-task knobs of the CFG function."""

    cfg_scale: float = 4.0
    sharpness: float = 2.0
    mimic_scale: float = 7.0
    adm_scaler_end: float = 0.3
    perp_neg_scale: float = 0.0


class GuidanceCorrection(Protocol):
    """A change to the guided x0 after CFG (e.g. Self-Attention Guidance)."""

    def correct(self, stage: DenoiseStage, *, x: torch.Tensor, sigma: torch.Tensor, x0_uncond: torch.Tensor,
                x0_guided: torch.Tensor, evaluate_uncond: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The corrected x0 of ``stage``; ``evaluate_uncond(x_noised)`` runs its unconditional branch at sigma."""
        ...


def _max_repeat_ratio(lengths: list[int]) -> tuple[int, int]:
    common = 1
    for length in lengths:
        common = common * length // math.gcd(common, length)
    return common, common // min(lengths)


class GuidedDenoiser:
    """Callable ``(x, sigma) -> x0`` applying Fooocus's sampling function (§2.8) to the current stage."""

    def __init__(self, stage: DenoiseStage, settings: GuidanceSettings,
                 corrections: Sequence[GuidanceCorrection] = ()) -> None:
        self.stage = stage
        self.settings = settings
        self.corrections = tuple(corrections)
        self.last_timestep: float = 999.0
        self.evaluations = 0

    def _conditioning_for(self, branch: BranchConditioning, timestep: float) -> tuple[torch.Tensor, torch.Tensor]:
        if branch.time_ids_late is not None and not use_emphasized_adm(timestep, self.settings.adm_scaler_end):
            return branch.pooled, branch.time_ids_late
        return branch.pooled, branch.time_ids

    def _unet(self, x_in: torch.Tensor, timestep: torch.Tensor, branches: list[BranchConditioning],
              timestep_value: float) -> list[torch.Tensor]:
        """Run the UNet on every branch; branches of unequal token length are repeated to their LCM when
        the ratio is ≤ 4 and batched, as ComfyUI does, otherwise run one by one."""
        unet = self.stage.unet
        dtype = next(unet.parameters()).dtype
        lengths = [b.cond.shape[1] for b in branches]
        common, ratio = _max_repeat_ratio(lengths)
        groups = [branches] if ratio <= 4 else [[b] for b in branches]
        outputs: list[torch.Tensor] = []
        for group in groups:
            target = max(b.cond.shape[1] for b in group) if len(group) == 1 else common
            contexts = [b.cond.repeat(1, target // b.cond.shape[1], 1) for b in group]
            pooled, time_ids = zip(*(self._conditioning_for(b, timestep_value) for b in group), strict=True)
            batch = len(group)
            result = unet(
                x_in.repeat(batch, 1, 1, 1).to(dtype),
                timestep.repeat(batch),
                encoder_hidden_states=torch.cat(contexts).to(dtype),
                added_cond_kwargs={"text_embeds": torch.cat(pooled).to(dtype),
                                   "time_ids": torch.cat(time_ids)},
                return_dict=False,
            )[0].float()
            outputs.extend(result.chunk(batch))
            self.evaluations += 1
        return outputs

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        stage, settings = self.stage, self.settings
        sigma = sigma.reshape(-1)[:1]
        timestep = stage.sampling.timestep(sigma).float()
        timestep_value = float(timestep[0])
        self.last_timestep = timestep_value
        x_in = stage.sampling.scale_input(x, sigma)

        if math.isclose(settings.cfg_scale, 1.0):
            (out,) = self._unet(x_in, timestep, [stage.positive], timestep_value)
            return stage.sampling.to_denoised(out, x, sigma)

        branches = [stage.positive, stage.negative]
        use_perp_neg = settings.perp_neg_scale > 0 and stage.empty is not None
        if use_perp_neg:
            branches.append(stage.empty)
        outputs = self._unet(x_in, timestep, branches, timestep_value)
        x0s = [stage.sampling.to_denoised(out, x, sigma) for out in outputs]
        progress = guidance_progress(timestep_value)
        if use_perp_neg:
            guided = perp_neg_guidance(x, x0s[0], x0s[1], x0s[2], cfg_scale=settings.cfg_scale,
                                       neg_scale=settings.perp_neg_scale)
        else:
            guided = fooocus_guidance(x, x0s[0], x0s[1], cfg_scale=settings.cfg_scale,
                                      sharpness=settings.sharpness, mimic_scale=settings.mimic_scale,
                                      progress=progress)
        for correction in self.corrections:
            guided = correction.correct(stage, x=x, sigma=sigma, x0_uncond=x0s[1], x0_guided=guided,
                                        evaluate_uncond=self._uncond_evaluator(sigma, timestep, timestep_value))
        return guided

    def _uncond_evaluator(self, sigma: torch.Tensor, timestep: torch.Tensor,
                          timestep_value: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def evaluate(x_noised: torch.Tensor) -> torch.Tensor:
            x_in = self.stage.sampling.scale_input(x_noised, sigma)
            (out,) = self._unet(x_in, timestep, [self.stage.negative], timestep_value)
            return self.stage.sampling.to_denoised(out, x_noised, sigma)

        return evaluate
