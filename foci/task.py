"""The one typed task record that the CLI, API, UI, queue and image metadata share."""

from __future__ import annotations

import re
import secrets
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

from foci.fields import Cli, Config, Control, Meta, field
from foci.sampling.names import SAMPLERS, SCHEDULERS

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
MAX_MASK_DILATE = 64  # Fooocus's "Mask Erode or Dilate" slider range

UOV_METHODS = ("Disabled", "Vary (Subtle)", "Vary (Strong)", "Upscale (1.5x)", "Upscale (2x)", "Upscale (Fast 2x)")
INPAINT_DEFAULT = "Inpaint or Outpaint (default)"
INPAINT_DETAIL = "Improve Detail (face, hand, eyes, etc.)"
INPAINT_MODIFY = "Modify Content (add objects, change background, etc.)"
INPAINT_METHODS = (INPAINT_DEFAULT, INPAINT_DETAIL, INPAINT_MODIFY)
INPAINT_ENGINES = ("None", "v1", "v2.5", "v2.6")
OUTPAINT_DIRECTIONS = ("Left", "Right", "Top", "Bottom")
_METHOD_DEFAULTS: dict[str, tuple[str, float, float]] = {  # method → (engine, strength, respective field), §1.7
    INPAINT_DEFAULT: ("v2.6", 1.0, 0.618),
    INPAINT_DETAIL: ("None", 0.5, 0.0),
    INPAINT_MODIFY: ("v2.6", 1.0, 0.0),
}


def random_seed() -> int:
    """A fresh random seed in [0, MAX_SEED] (the one seed source of the CLI, the API and the UI)."""
    return secrets.randbelow(MAX_SEED + 1)


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
ImageHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""An input image or mask, named by the SHA-256 of its file (see :mod:`foci.files.input_images`)."""
Strength = Annotated[float, Field(ge=0.0, le=1.0)]


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
    """Every setting of one Generate click. Defaults are Fooocus's default preset (Speed).

    Each field is one row of the field table (:mod:`foci.fields`): next to its default and bounds it names its CLI
    option, UI control, keys in both metadata schemes and config key; those front ends are generated from it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: Prompt = field("", cli=Cli("prompt", help="the prompt; several lines become separate items",
                                       prompt_command=True),
                           ui=Control("textbox", "Prompt", place="custom"), fooocus="prompt",
                           a1111=Meta("Raw prompt", codec="raw_prompt"), config="default_prompt")
    negative_prompt: Prompt = field("", cli=Cli("--negative", help="negative prompt", prompt_command=True),
                                    ui=Control("textbox", "Negative Prompt", place="custom"),
                                    fooocus="negative_prompt",
                                    a1111=Meta("Raw negative prompt", codec="raw_negative_prompt"),
                                    config="default_prompt_negative")
    styles: list[Name] = field(default_factory=lambda: list(DEFAULT_STYLES), max_length=MAX_STYLES,
                               cli=Cli("--styles", help='comma-separated style names ("" for none); default from '
                                       "the preset", prompt_command=True, convert="comma_list"),
                               ui=Control("checkboxes", "Styles", place="custom", convert="list"),
                               fooocus=Meta("styles", codec="styles"), a1111=Meta("Styles", codec="styles"),
                               config="default_styles")
    performance: Name = field("Speed", cli=Cli("--performance", help="Quality, Speed, Extreme Speed, Lightning or "
                                               "Hyper-SD", prompt_command=True),
                              ui=Control("radio", "Performance", place="custom"), fooocus="performance",
                              a1111="Performance", config="default_performance")
    aspect_ratio: Name = field("1152*896", cli=Cli("--aspect", help="WIDTH*HEIGHT, e.g. 1152*896"),
                               ui=Control("radio", "Aspect Ratios", place="custom"),
                               fooocus=Meta("resolution", codec="size"), a1111=Meta("Size", codec="size"),
                               config="default_aspect_ratio")
    image_number: int = field(2, ge=1, le=32, cli=Cli("--image-number", prompt_command=True),
                              ui=Control("slider", "Image Number", place="settings", step=1,
                                         elem_id="foci-image-number", name="image number"),
                              config="default_image_number")
    seed: int = field(0, ge=0, le=MAX_SEED, cli=Cli("--seed", help="seed of the first image (random if omitted)",
                                                    prompt_command=True),
                      ui=Control("textbox", "Seed", place="custom", convert="seed"),
                      fooocus=Meta("seed", codec="seed"), a1111=Meta("Seed", codec="seed"))
    disable_seed_increment: bool = field(False, ui=Control("checkbox", "Same seed for every image", place="overrides"))
    read_wildcards_in_order: bool = field(False, cli=Cli("--read-wildcards-in-order", action="flag",
                                                         prompt_command=True),
                                          ui=Control("checkbox", "Read wildcards in order", place="overrides"))
    output_format: Literal["png", "jpeg", "webp"] = field("png", cli=Cli("--format"),
                                                          ui=Control("radio", "Output Format", place="settings"),
                                                          config="default_output_format")

    steps: int = field(30, ge=1, le=MAX_STEPS, cli=Cli("--steps"), fooocus=Meta("steps", codec="effective_steps"),
                       a1111=Meta("Steps", codec="effective_steps"))
    guidance_scale: float = field(4.0, ge=1.0, le=30.0, cli=Cli("--cfg", help="guidance scale"),
                                  ui=Control("slider", "Guidance Scale", place="advanced", step=0.01,
                                             elem_id="foci-guidance"),
                                  fooocus="guidance_scale", a1111="CFG scale", config="default_cfg_scale")
    sharpness: float = field(2.0, ge=0.0, le=30.0, cli=Cli("--sharpness"),
                             ui=Control("slider", "Image Sharpness", place="advanced", step=0.001,
                                        elem_id="foci-sharpness"),
                             fooocus="sharpness", a1111="Sharpness", config="default_sample_sharpness")
    sampler: str = field("dpmpp_2m_sde_gpu", choices=SAMPLERS, cli=Cli("--sampler"),
                         ui=Control("dropdown", "Sampler", place="sampling", elem_id="foci-sampler"),
                         fooocus="sampler", a1111=Meta("Sampler", codec="sampler"), config="default_sampler")
    scheduler: str = field("karras", choices=SCHEDULERS, cli=Cli("--scheduler"),
                           ui=Control("dropdown", "Scheduler", place="sampling", elem_id="foci-scheduler"),
                           fooocus="scheduler", a1111=Meta("Scheduler", codec="scheduler"), config="default_scheduler")
    clip_skip: int = field(2, ge=1, le=12, cli=Cli("--clip-skip"),
                           ui=Control("slider", "CLIP skip", place="sampling", step=1),
                           # Fooocus (and A1111) leave clip skip 1 out, so a missing key means 1
                           fooocus=Meta("clip_skip", omit_values=(1,), absent=1),
                           a1111=Meta("Clip skip", omit_values=(1,), absent=1), config="default_clip_skip")
    adaptive_cfg: float = field(7.0, ge=1.0, le=30.0, cli=Cli("--adaptive-cfg", help="CFG mimicking scale"),
                                ui=Control("slider", "CFG mimicking (TSNR)", place="sampling", step=0.01,
                                           elem_id="foci-adaptive-cfg"),
                                fooocus=Meta("adaptive_cfg", omit_if_default=True),
                                a1111=Meta("Adaptive CFG", omit_if_default=True), config="default_cfg_tsnr")
    adm_scaler_positive: float = field(1.5, ge=0.1, le=3.0,
                                       ui=Control("slider", "ADM scaler, positive", place="sampling", step=0.001),
                                       fooocus=Meta("adm_guidance", codec="adm"),
                                       a1111=Meta("ADM Guidance", codec="adm"))
    adm_scaler_negative: float = field(0.8, ge=0.1, le=3.0,
                                       ui=Control("slider", "ADM scaler, negative", place="sampling", step=0.001),
                                       fooocus=Meta("adm_guidance", codec="adm"),
                                       a1111=Meta("ADM Guidance", codec="adm"))
    adm_scaler_end: float = field(0.3, ge=0.0, le=1.0,
                                  ui=Control("slider", "ADM guidance ends at", place="sampling", step=0.001),
                                  fooocus=Meta("adm_guidance", codec="adm"),
                                       a1111=Meta("ADM Guidance", codec="adm"))
    freeu: FreeUSettings = field(default_factory=FreeUSettings,
                                 cli=Cli("--freeu", help="enable FreeU (b1 1.01, b2 1.02, s1 0.99, s2 0.95)",
                                         action="flag", flag_value={"enabled": True}),
                                 ui=Control("checkbox", "FreeU", place="custom", convert="freeu"),
                                 fooocus=Meta("freeu", codec="freeu"), a1111=Meta("FreeU", codec="freeu"))
    sag_scale: float = field(0.0, ge=0.0, le=10.0, description="Self-Attention Guidance scale; 0 = off",
                             cli=Cli("--sag", help="Self-Attention Guidance scale (0 = off)"),
                             ui=Control("slider", "Self-attention guidance (0 = off)", place="sampling", step=0.01),
                             fooocus=Meta("sag_scale", omit_if_default=True),
                             a1111=Meta("SAG scale", omit_if_default=True))
    perp_neg_scale: float = field(0.0, ge=0.0, le=10.0, description="Perpendicular negative scale; 0 = off",
                                  cli=Cli("--perp-neg", help="Perp-Neg scale (0 = off)"),
                                  ui=Control("slider", "Perp-Neg (0 = off)", place="sampling", step=0.01),
                                  fooocus=Meta("perp_neg_scale", omit_if_default=True),
                                  a1111=Meta("Perp-Neg scale", omit_if_default=True))

    base_model: Name = field("", cli=Cli("--model", help="base SDXL checkpoint: a path or a name in the checkpoints "
                                         "folder"),
                             ui=Control("dropdown", "Base Model", place="custom", convert="text"),
                             fooocus=Meta("base_model", codec="model"), a1111=Meta("Model", codec="model"),
                             config=Config("default_model", convert="effective_default_model"))
    refiner_model: Name | None = field(None, cli=Cli("--refiner", help="refiner checkpoint (path or name; None for "
                                                     "none)", convert="none_name"),
                                       ui=Control("dropdown", "Refiner", place="custom", convert="no_model"),
                                       fooocus=Meta("refiner_model", codec="refiner"),
                                       a1111=Meta("Refiner", codec="refiner"), config="default_refiner")
    refiner_switch: float = field(0.5, ge=0.1, le=1.0, cli=Cli("--refiner-switch"),
                                  ui=Control("slider", "Refiner Switch At", place="models", step=0.0001,
                                             elem_id="foci-refiner-switch"),
                                  fooocus="refiner_switch", a1111=Meta("Refiner switch at", codec="refiner_switch"),
                                  config="default_refiner_switch")
    refiner_swap_method: Literal["joint", "separate"] = field(
        "joint", cli=Cli("--refiner-swap-method"), ui=Control("radio", "Refiner swap method", place="sampling"),
        fooocus=Meta("refiner_swap_method", omit_if_default=True),
        a1111=Meta("Refiner Swap Method", omit_if_default=True))
    vae: Name | None = field(None, cli=Cli("--vae", help="VAE file overriding the checkpoint's VAE"),
                             ui=Control("dropdown", "VAE", place="sampling", convert="vae"),
                             fooocus=Meta("vae", codec="vae"), a1111=Meta("VAE", codec="vae"), config="default_vae")
    loras: list[LoraSpec] = field(default_factory=list, max_length=MAX_LORAS,
                                  cli=Cli("--lora", help="a LoRA (repeatable); replaces the preset's LoRA slots; "
                                          "'none' for no LoRA", action="append", metavar="NAME:WEIGHT",
                                          convert="loras"),
                                  ui=Control("dropdown", "LoRA", place="custom", convert="loras"),
                                  fooocus=Meta("loras", codec="loras"), a1111=Meta("Lora weights", codec="loras"),
                                  config=Config("default_loras", convert="lora_slots"))

    overwrite_step: int = field(-1, ge=-1, le=MAX_STEPS, description="-1 or 0: use steps",
                                ui=Control("number", "Forced sampling steps (-1 = from performance)",
                                           place="overrides", elem_id="foci-overwrite-step",
                                           name="forced sampling steps", convert="overwrite_step"),
                                config="default_overwrite_step")
    overwrite_switch: int = field(-1, ge=-1, le=MAX_STEPS, description="-1 or 0: from refiner_switch",
                                  ui=Control("number", "Forced refiner switch step (-1 = off)", place="overrides",
                                             name="forced refiner switch step"),
                                  fooocus=Meta("overwrite_switch", omit_values=(-1, 0)),
                                  a1111=Meta("Overwrite Switch", omit_values=(-1, 0)),
                                  config="default_overwrite_switch")
    overwrite_width: int = field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0: from aspect_ratio",
                                 ui=Control("number", "Forced width (-1 = off)", place="overrides",
                                            name="forced width"))
    overwrite_height: int = field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0: from aspect_ratio",
                                  ui=Control("number", "Forced height (-1 = off)", place="overrides",
                                             name="forced height"))

    # ------------------------------------------------------------------------ input image (§1.7, §2.12, §2.13)
    input_image: ImageHash | None = field(
        None, description="SHA-256 of the input image in the input store (for Upscale/Vary and Inpaint/Outpaint)",
        cli=Cli("--input-image", help="input image file for --uov or inpaint/outpaint", metavar="IMAGE",
                convert="input_image"),
        fooocus=Meta("input_image", omit_if_default=True), a1111=Meta("Input image", omit_if_default=True))
    uov_method: Literal[UOV_METHODS] = field(  # type: ignore[valid-type]
        "Disabled", cli=Cli("--uov", help="Upscale or Variation: " + ", ".join(f'"{m}"' for m in UOV_METHODS[1:])),
        fooocus=Meta("uov_method", omit_if_default=True), a1111=Meta("Upscale or variation", omit_if_default=True))
    inpaint_mask: ImageHash | None = field(
        None, description="SHA-256 of the inpaint mask (white = repaint) in the input store",
        cli=Cli("--inpaint-mask", help="mask image: white = repaint (resized to the input image)", metavar="MASK",
                convert="input_image"),
        fooocus=Meta("inpaint_mask", omit_if_default=True), a1111=Meta("Inpaint mask", omit_if_default=True))
    outpaint: list[Literal[OUTPAINT_DIRECTIONS]] = field(  # type: ignore[valid-type]
        default_factory=list, max_length=4,
        cli=Cli("--outpaint", help="outpaint directions, comma-separated: left,right,top,bottom",
                convert="outpaint"),
        fooocus=Meta("outpaint_selections", codec="directions"), a1111=Meta("Outpaint", codec="directions"))
    inpaint_method: Literal[INPAINT_METHODS] = field(  # type: ignore[valid-type]
        INPAINT_DEFAULT, cli=Cli("--inpaint-method", help="; ".join(f'"{m}"' for m in INPAINT_METHODS)),
        fooocus=Meta("inpaint_method", omit_if_default=True), a1111=Meta("Inpaint method", omit_if_default=True))
    inpaint_engine: Literal[INPAINT_ENGINES] | None = field(  # type: ignore[valid-type]
        None, description="None: from the method (v2.6, or no engine for Improve Detail)",
        cli=Cli("--inpaint-engine", help="v1, v2.5, v2.6 or None (default: from the method)"),
        fooocus=Meta("inpaint_engine_version", omit_if_default=True),
        a1111=Meta("Inpaint engine", omit_if_default=True))
    inpaint_strength: Strength | None = field(
        None, description="denoising strength of the inpaint (default: from the method)",
        cli=Cli("--inpaint-strength", help="inpaint denoising strength (default: from the method)"),
        fooocus=Meta("inpaint_strength", omit_if_default=True),
        a1111=Meta("Inpaint strength", omit_if_default=True))
    inpaint_respective_field: Strength | None = field(
        None, description="share of the image the inpaint sees around the mask (default: from the method)",
        cli=Cli("--inpaint-respective-field",
                help="0 = just around the mask … 1 = the whole image (default: from the method)"),
        fooocus=Meta("inpaint_respective_field", omit_if_default=True),
        a1111=Meta("Inpaint respective field", omit_if_default=True))
    inpaint_prompt: Prompt = field(
        "", description="additional inpaint prompt, put before the prompt as its first line",
        cli=Cli("--inpaint-prompt", help="additional prompt for the inpainted area (prepended to the prompt)"),
        fooocus=Meta("inpaint_additional_prompt", omit_if_default=True),
        a1111=Meta("Inpaint additional prompt", omit_if_default=True))
    mask_dilate: int = field(
        0, ge=-MAX_MASK_DILATE, le=MAX_MASK_DILATE, description="dilate (>0) or erode (<0) the mask by N pixels",
        cli=Cli("--mask-dilate", help="grow (>0) or shrink (<0) the mask by N pixels"),
        fooocus=Meta("inpaint_erode_or_dilate", omit_if_default=True),
        a1111=Meta("Mask erode or dilate", omit_if_default=True))
    invert_mask: bool = field(
        False, cli=Cli("--invert-mask", help="repaint the black part of the mask instead", action="flag"),
        fooocus=Meta("invert_mask", omit_if_default=True), a1111=Meta("Invert mask", omit_if_default=True))
    upscale_model: Name = field(
        "fooocus_upscaler_s409985e5.bin",
        description="super-resolution model in the upscale_models folder (Upscale, and small inpaint crops)",
        cli=Cli("--upscale-model", help="upscaler file in models/upscale_models (default: Fooocus's ESRGAN)"),
        fooocus=Meta("upscale_model", omit_if_default=True), a1111=Meta("Upscaler", omit_if_default=True))
    overwrite_vary_strength: float = field(
        -1.0, ge=-1.0, le=1.0, description="-1: Vary's own denoise (0.5 subtle, 0.85 strong)",
        ui=Control("slider", "Forced Overwrite of Denoising Strength of \"Vary\"", place="overrides", step=0.001,
                   name="vary strength overwrite"),
        fooocus=Meta("overwrite_vary_strength", omit_values=(-1.0,)),
        a1111=Meta("Overwrite vary strength", omit_values=(-1.0,)))
    overwrite_upscale_strength: float = field(
        -1.0, ge=-1.0, le=1.0, description="-1: Upscale's own denoise (0.382)",
        ui=Control("slider", "Forced Overwrite of Denoising Strength of \"Upscale\"", place="overrides",
                   step=0.001, name="upscale strength overwrite"),
        fooocus=Meta("overwrite_upscale_strength", omit_values=(-1.0,)),
        a1111=Meta("Overwrite upscale strength", omit_values=(-1.0,)))
    debug_inpaint: bool = field(
        False, description="write the inpaint fill, mask and crop instead of generating",
        cli=Cli("--debug-inpaint", help="save the inpaint preprocessing (fill, mask, crop) and stop", action="flag"),
        ui=Control("checkbox", "Debug Inpaint Preprocessing", place="overrides"))

    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", cli=Cli("--precision", help="fp32 reproduces Fooocus exactly; auto picks bf16/fp16 where fast"),
        ui=Control("radio", "Precision", place="overrides"), fooocus="precision",
        a1111=Meta("Precision", omit_if_default=True))
    save_metadata: bool = field(True, cli=Cli("--no-metadata", help="do not embed metadata in images", action="flag",
                                              flag_value=False),
                                ui=Control("checkbox", "Save metadata to images", place="overrides"),
                                config="default_save_metadata_to_images")
    metadata_scheme: Literal["fooocus", "a1111"] = field("fooocus", cli=Cli("--metadata-scheme"),
                                                         ui=Control("radio", "Metadata scheme", place="overrides"),
                                                         config="default_metadata_scheme")

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

    @model_validator(mode="after")
    def _input_image_use(self) -> GenerationTask:
        uov = self.uov_method != "Disabled"
        inpaint = self.inpaint_mask is not None or bool(self.outpaint)
        if (uov or inpaint) and self.input_image is None:
            raise ValueError("uov_method, inpaint_mask and outpaint need an input_image")
        if uov and inpaint:
            raise ValueError("choose either Upscale/Vary (uov_method) or Inpaint/Outpaint (inpaint_mask, outpaint), "
                             "not both")
        if self.input_image is not None and not (uov or inpaint):
            raise ValueError("input_image is given but not used: set uov_method, or inpaint_mask and/or outpaint")
        return self

    @property
    def input_mode(self) -> Literal["text", "uov", "inpaint"]:
        """What the input image is for: nothing (text to image), Upscale/Vary, or Inpaint/Outpaint."""
        if self.input_image is None:
            return "text"
        return "uov" if self.uov_method != "Disabled" else "inpaint"

    @property
    def effective_inpaint_engine(self) -> str:
        """The inpaint engine after the method's default (§1.7): ``None``, ``v1``, ``v2.5`` or ``v2.6``."""
        return self.inpaint_engine if self.inpaint_engine is not None else _METHOD_DEFAULTS[self.inpaint_method][0]

    @property
    def effective_inpaint_strength(self) -> float:
        """The inpaint denoising strength after the method's default (§1.7)."""
        if self.inpaint_strength is not None:
            return self.inpaint_strength
        return _METHOD_DEFAULTS[self.inpaint_method][1]

    @property
    def effective_respective_field(self) -> float:
        """The inpaint respective field after the method's default (§1.7)."""
        if self.inpaint_respective_field is not None:
            return self.inpaint_respective_field
        return _METHOD_DEFAULTS[self.inpaint_method][2]

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
