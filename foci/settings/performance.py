"""Fooocus performance modes (§1.9): step counts, speed LoRAs and the settings they force.

Step rule used by :func:`apply_performance` (Fooocus takes the step count from the mode; Foci also lets a caller
choose it):

* ``overwrite_step > 0`` always wins (``GenerationTask.effective_steps``), exactly as in Fooocus.
* Otherwise, if the caller set ``steps`` explicitly on the task (it is in pydantic's ``model_fields_set``: passed
  to the constructor, assigned, or read back from image metadata), that count is kept, in every mode.
* Otherwise ``steps`` becomes the mode's count (Quality 60, Speed 30, Extreme Speed 8, Lightning 4, Hyper-SD 4).
  The returned task does not mark those mode steps as explicitly set, so applying another mode to it later
  replaces them again.

Restricted modes (Extreme Speed, Lightning, Hyper-SD) always force their sampler, scheduler, sharpness 0, CFG 1,
CFG mimicking 1, no refiner, refiner switch 1.0 and neutral ADM (1.0 / 1.0 / end 0.0), whatever the task says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from foci.task import GenerationTask


class PerformanceError(ValueError):
    """An unknown performance mode name."""


class Performance(str, Enum):
    """The five Fooocus performance modes; values are the UI labels Fooocus stores in metadata."""

    QUALITY = "Quality"
    SPEED = "Speed"
    EXTREME_SPEED = "Extreme Speed"
    LIGHTNING = "Lightning"
    HYPER_SD = "Hyper-SD"

    @classmethod
    def parse(cls, value: str | Performance) -> Performance:
        """Accept a label or member name in any case and spacing: ``"Extreme Speed"``, ``"extreme_speed"``, …"""
        if isinstance(value, cls):
            return value
        wanted = _squash(str(value))
        for member in cls:
            if wanted in (_squash(member.value), _squash(member.name)):
                return member
        choices = ", ".join(member.value for member in cls)
        raise PerformanceError(f"unknown performance {value!r}; choose one of: {choices}")

    @property
    def is_restricted(self) -> bool:
        """True for the LoRA-distilled modes whose sampling settings are forced."""
        return PERFORMANCE_MODES[self].lora is not None


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class PerformanceMode:
    """Steps (text-to-image and Upscale-or-Vary), the LoRA appended after the user's, and forced task fields."""

    steps: int
    uov_steps: int
    lora: tuple[str, float] | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _restricted(sampler: str, scheduler: str) -> Mapping[str, Any]:
    return MappingProxyType({
        "refiner_model": None,
        "sampler": sampler,
        "scheduler": scheduler,
        "sharpness": 0.0,
        "guidance_scale": 1.0,
        "adaptive_cfg": 1.0,
        "refiner_switch": 1.0,
        "adm_scaler_positive": 1.0,
        "adm_scaler_negative": 1.0,
        "adm_scaler_end": 0.0,
    })


LCM_LORA = "sdxl_lcm_lora.safetensors"
LIGHTNING_LORA = "sdxl_lightning_4step_lora.safetensors"
HYPER_SD_LORA = "sdxl_hyper_sd_4step_lora.safetensors"

PERFORMANCE_MODES: Mapping[Performance, PerformanceMode] = MappingProxyType({
    Performance.QUALITY: PerformanceMode(steps=60, uov_steps=36),
    Performance.SPEED: PerformanceMode(steps=30, uov_steps=18),
    Performance.EXTREME_SPEED: PerformanceMode(steps=8, uov_steps=8, lora=(LCM_LORA, 1.0),
                                               overrides=_restricted("lcm", "lcm")),
    Performance.LIGHTNING: PerformanceMode(steps=4, uov_steps=4, lora=(LIGHTNING_LORA, 1.0),
                                           overrides=_restricted("euler", "sgm_uniform")),
    Performance.HYPER_SD: PerformanceMode(steps=4, uov_steps=4, lora=(HYPER_SD_LORA, 0.8),
                                          overrides=_restricted("dpmpp_sde_gpu", "karras")),
})

# Where Fooocus downloads each performance LoRA from (into the first LoRA folder).
PERFORMANCE_LORA_URLS: Mapping[str, str] = MappingProxyType({
    LCM_LORA: "https://huggingface.co/lllyasviel/misc/resolve/main/sdxl_lcm_lora.safetensors",
    LIGHTNING_LORA: "https://huggingface.co/mashb1t/misc/resolve/main/sdxl_lightning_4step_lora.safetensors",
    HYPER_SD_LORA: "https://huggingface.co/mashb1t/misc/resolve/main/sdxl_hyper_sd_4step_lora.safetensors",
})


def performance_lora_names() -> frozenset[str]:
    """File names of all performance LoRAs (Fooocus hides them from inline ``<lora:>`` and metadata import)."""
    return frozenset(mode.lora[0] for mode in PERFORMANCE_MODES.values() if mode.lora is not None)


def apply_performance(task: GenerationTask) -> tuple[GenerationTask, list[tuple[str, float]]]:
    """The task with the mode's steps and forced settings applied, and the LoRAs to append after the user's.

    See the module docstring for the step rule. Raises :class:`PerformanceError` for an unknown mode.
    """
    performance = Performance.parse(task.performance)
    mode = PERFORMANCE_MODES[performance]
    steps_chosen = "steps" in task.model_fields_set
    updates: dict[str, Any] = {"performance": performance.value, **mode.overrides}
    if not steps_chosen:  # Upscale samples with the mode's own Upscale-or-Vary step count (§2.13)
        updates["steps"] = mode.uov_steps if task.uov_method.startswith("Upscale") else mode.steps
    validated = GenerationTask.model_validate({**task.model_dump(), **updates})
    fields_set = set(task.model_fields_set) | set(updates)
    if not steps_chosen:
        fields_set.discard("steps")
    result = GenerationTask.model_construct(_fields_set=fields_set, **dict(validated))
    loras = [mode.lora] if mode.lora is not None else []
    return result, loras
