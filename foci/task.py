"""The one typed task record that the CLI, API, UI, queue and image metadata share."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

SAMPLERS: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "tcd", "restart", "ddim",
    "uni_pc", "uni_pc_bh2",
)
SCHEDULERS: tuple[str, ...] = (
    "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "lcm", "turbo",
    "align_your_steps", "tcd", "edm_playground_v2.5",
)
MAX_SEED = 2**63 - 1
DEFAULT_STYLES: tuple[str, ...] = ("Fooocus V2", "Fooocus Enhance", "Fooocus Sharp")
_SIZE = re.compile(r"^\s*(\d+)\s*[*x×]\s*(\d+)\s*$")
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")

MAX_PROMPT_CHARS = 20_000
MAX_NAME_CHARS = 1024  # a model/LoRA/VAE name (or, from the CLI, a path), a style, a performance or size label
MAX_STYLES = 512
MAX_LORAS = 32
MAX_SIZE = 4096
MAX_STEPS = 200  # Fooocus's forced-overwrite slider maximum
MAX_LORA_WEIGHT = 10.0  # Fooocus's config allows LoRA slider limits up to ±10


def check_text(value: str) -> str:
    """``value`` if it is text every store and file format can hold: UTF-8-encodable (no lone UTF-16 surrogates)
    and free of NUL characters; ValueError naming the first offending character otherwise."""
    bad = _NOT_TEXT.search(value)
    if bad is not None:
        raise ValueError(f"text holds the character U+{ord(bad.group()):04X} at position {bad.start()}, which is "
                         "not valid Unicode text (a lone surrogate or NUL)")
    return value


def encodable(text: str) -> str:
    """``text`` with anything :func:`check_text` rejects shown as a backslash escape (for error messages)."""
    return text.replace("\0", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS), AfterValidator(check_text)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS), AfterValidator(check_text)]


def parse_size(text: str) -> tuple[int, int]:
    """Parse an aspect-ratio label such as ``"1152*896"`` into (width, height)."""
    match = _SIZE.match(str(text).split("|")[0].split("(")[0].strip() or "")
    if not match:
        raise ValueError(f"size must look like 1152*896, got {text!r}")
    return int(match.group(1)), int(match.group(2))


class LoraSpec(BaseModel):
    """One LoRA slot: a file name (or path) and its weight."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    weight: float = Field(1.0, ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)
    enabled: bool = True


class FreeUSettings(BaseModel):
    """FreeU V2 scales (§2.19); off unless ``enabled``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    b1: float = Field(1.01, ge=0.0, le=10.0)
    b2: float = Field(1.02, ge=0.0, le=10.0)
    s1: float = Field(0.99, ge=0.0, le=10.0)
    s2: float = Field(0.95, ge=0.0, le=10.0)


class GenerationTask(BaseModel):
    """Every setting of one Generate click. Defaults are Fooocus's default preset (Speed)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    styles: list[Name] = Field(default_factory=lambda: list(DEFAULT_STYLES), max_length=MAX_STYLES)
    performance: Name = "Speed"
    aspect_ratio: Name = "1152*896"
    image_number: int = Field(2, ge=1, le=32)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    disable_seed_increment: bool = False
    read_wildcards_in_order: bool = False
    output_format: Literal["png", "jpeg", "webp"] = "png"

    steps: int = Field(30, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(4.0, ge=1.0, le=30.0)
    sharpness: float = Field(2.0, ge=0.0, le=30.0)
    sampler: str = "dpmpp_2m_sde_gpu"
    scheduler: str = "karras"
    clip_skip: int = Field(2, ge=1, le=12)
    adaptive_cfg: float = Field(7.0, ge=1.0, le=30.0)
    adm_scaler_positive: float = Field(1.5, ge=0.1, le=3.0)
    adm_scaler_negative: float = Field(0.8, ge=0.1, le=3.0)
    adm_scaler_end: float = Field(0.3, ge=0.0, le=1.0)
    freeu: FreeUSettings = Field(default_factory=FreeUSettings)
    sag_scale: float = Field(0.0, ge=0.0, le=10.0, description="Self-Attention Guidance scale; 0 = off")
    perp_neg_scale: float = Field(0.0, ge=0.0, le=10.0, description="Perpendicular negative scale; 0 = off")

    base_model: Name = ""
    refiner_model: Name | None = None
    refiner_switch: float = Field(0.5, ge=0.1, le=1.0)
    refiner_swap_method: Literal["joint", "separate"] = "joint"
    vae: Name | None = None
    loras: list[LoraSpec] = Field(default_factory=list, max_length=MAX_LORAS)

    overwrite_step: int = Field(-1, ge=-1, le=MAX_STEPS, description="-1 or 0: use steps")
    overwrite_switch: int = Field(-1, ge=-1, le=MAX_STEPS, description="-1 or 0: from refiner_switch")
    overwrite_width: int = Field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0: from aspect_ratio")
    overwrite_height: int = Field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0: from aspect_ratio")

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_metadata: bool = True
    metadata_scheme: Literal["fooocus", "a1111"] = "fooocus"

    @field_validator("sampler", "scheduler")
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        choices = SAMPLERS if info.field_name == "sampler" else SCHEDULERS
        if value not in choices:
            raise ValueError(f"unknown {info.field_name} {value!r}; choose one of: {', '.join(choices)}")
        return value

    @field_validator("aspect_ratio")
    @classmethod
    def _valid_aspect(cls, value: str) -> str:
        width, height = parse_size(value)
        return f"{width}*{height}"

    @model_validator(mode="after")
    def _valid_size(self) -> GenerationTask:
        width, height = self.size
        for name, value in (("width", width), ("height", height)):
            if value % 8 or not 64 <= value <= MAX_SIZE:
                raise ValueError(f"{name} {value} must be a multiple of 8 between 64 and {MAX_SIZE}")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after the developer overwrites."""
        width, height = parse_size(self.aspect_ratio)
        if self.overwrite_width > 0:
            width = self.overwrite_width
        if self.overwrite_height > 0:
            height = self.overwrite_height
        return width, height

    @property
    def effective_steps(self) -> int:
        """Sampling steps after the developer overwrite."""
        return self.overwrite_step if self.overwrite_step > 0 else self.steps

    @property
    def switch_step(self) -> int:
        """Step index after whose model evaluation the refiner takes over (§2.10)."""
        if self.overwrite_switch > 0:
            return self.overwrite_switch
        return int(round(self.effective_steps * self.refiner_switch))

    def image_seeds(self) -> list[int]:
        """Per-image seeds: seed, seed+1, … modulo 2^63 (§2.2)."""
        if self.disable_seed_increment:
            return [self.seed % (2**63)] * self.image_number
        return [(self.seed + i) % (2**63) for i in range(self.image_number)]
