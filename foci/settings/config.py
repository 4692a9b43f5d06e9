"""Settings from presets, the user config file and environment variables (Fooocus `config.txt` keys, §1.12–1.13).

Precedence for every key, highest first:

1. an environment variable with the key's exact name (``default_cfg_scale=5.5``), parsed with
   :func:`ast.literal_eval` (``"['a', 'b']"``, ``"True"``, ``"0.5"``); a value that does not parse, or parses to
   something the key rejects, is tried as the plain string;
2. the ``--preset`` file (``<root>/presets/NAME.json`` overrides the shipped ``foci/settings/presets/NAME.json``);
3. the user config file: ``config_path`` argument, else env ``FOCI_CONFIG``, else ``<root>/config.json``
   (a JSON object with the same keys as a Fooocus ``config.txt``);
4. ``presets/default.json`` (user copy first, then the shipped one);
5. the built-in fallback (the field defaults of :class:`FociSettings`, which are Fooocus's code fallbacks).

One module on purpose: a single settings model whose fields are Fooocus's config keys, and the loader that
applies the precedence above; splitting it would separate each key from its validation.

A value that is invalid for its key (wrong type, out of range, unknown sampler, …) gives a warning naming the key,
the value and the source, and the next source is tried. Relative ``path_*`` values resolve against ``root``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from foci.fields import task_fields
from foci.settings.aspect_ratios import DEFAULT_ASPECT_RATIO, SDXL_ASPECT_RATIOS
from foci.settings.performance import Performance
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask, LoraSpec, parse_size

CONFIG_ENV = "FOCI_CONFIG"
DEFAULT_CONFIG_NAME = "config.json"
NONE_NAME = "None"  # Fooocus's name for an empty model/LoRA slot
DEFAULT_VAE_NAME = "Default (model)"


class ConfigError(ValueError):
    """A config or preset file that cannot be used at all (missing, not JSON, unknown preset)."""


class LoraDefault(NamedTuple):
    """One LoRA slot of ``default_loras``."""

    enabled: bool
    name: str
    weight: float


# --- per-key validators --------------------------------------------------------------------------------------


def _check_sampler(value: str) -> str:
    if value not in SAMPLERS:
        raise ValueError(f"unknown sampler {value!r}")
    return value


def _check_scheduler(value: str) -> str:
    if value not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {value!r}")
    return value


def _check_performance(value: str) -> str:
    return Performance.parse(value).value


def _check_aspect_ratio(value: str) -> str:
    width, height = parse_size(value)
    for name, size in (("width", width), ("height", height)):
        if size % 8 or not 64 <= size <= 4096:
            raise ValueError(f"{name} {size} must be a multiple of 8 between 64 and 4096")
    return f"{width}*{height}"


def _none_if_empty(value: Any, *empty_names: str) -> Any:
    if value is None or (isinstance(value, str) and value.strip() in ("", NONE_NAME, *empty_names)):
        return None
    return value


def _lora_entry(value: Any) -> Any:
    """Accept ``[enabled, name, weight]`` or the older ``[name, weight]``."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (True, *value)
    return value


def _check_file_name(value: str) -> str:
    if not value or value != Path(value).name or value in (".", ".."):
        raise ValueError(f"download name {value!r} must be a plain file name")
    return value


def _check_url(value: str) -> str:
    if not re.match(r"^https?://\S+$", value):
        raise ValueError(f"download URL {value!r} must start with http:// or https://")
    return value


def _path_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, os.PathLike)) else value


SamplerName = Annotated[str, AfterValidator(_check_sampler)]
SchedulerName = Annotated[str, AfterValidator(_check_scheduler)]
PerformanceName = Annotated[str, AfterValidator(_check_performance)]
AspectRatio = Annotated[str, AfterValidator(_check_aspect_ratio)]
OptionalModel = Annotated[str | None, BeforeValidator(_none_if_empty)]
OptionalVae = Annotated[str | None, BeforeValidator(lambda value: _none_if_empty(value, DEFAULT_VAE_NAME))]
LoraEntry = Annotated[LoraDefault, BeforeValidator(_lora_entry)]
Downloads = dict[Annotated[str, AfterValidator(_check_file_name)], Annotated[str, AfterValidator(_check_url)]]
PathList = Annotated[list[Path], BeforeValidator(_path_list), Field(min_length=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Sha256 = Annotated[str, BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value),
                   Field(pattern=r"^[0-9a-f]{64}$")]


def _models(name: str) -> Path:
    return Path("models") / name


def _empty_loras() -> list[LoraDefault]:
    return [LoraDefault(True, NONE_NAME, 1.0) for _ in range(5)]


class FociSettings(BaseModel):
    """Every config key Foci reads. Field defaults are the built-in fallbacks (Fooocus's code defaults).

    Keys are resolved in field order, so a key may depend on an earlier one (``default_aspect_ratio`` must be in
    ``available_aspect_ratios``; ``default_image_number`` ≤ ``default_max_image_number``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Folders (relative ones resolve against the root given to load_settings).
    path_checkpoints: PathList = Field(default_factory=lambda: [_models("checkpoints")])
    path_loras: PathList = Field(default_factory=lambda: [_models("loras")])
    path_embeddings: Path = _models("embeddings")
    path_vae_approx: Path = _models("vae_approx")
    path_vae: Path = _models("vae")
    path_upscale_models: Path = _models("upscale_models")
    path_inpaint: Path = _models("inpaint")
    path_controlnet: Path = _models("controlnet")
    path_clip_vision: Path = _models("clip_vision")
    path_fooocus_expansion: Path = _models("prompt_expansion") / "fooocus_expansion"
    path_safety_checker: Path = _models("safety_checker")
    path_sam: Path = _models("sam")
    path_wildcards: Path = Path("wildcards")
    path_styles: Path = Path("styles")
    path_outputs: Path = Path("outputs")
    temp_path: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "foci")
    temp_path_cleanup_on_launch: bool = True

    # Models and LoRAs.
    default_model: NonEmptyStr = "model.safetensors"
    previous_default_models: list[str] = Field(default_factory=list)
    default_refiner: OptionalModel = None
    default_refiner_switch: float = Field(0.8, ge=0.1, le=1.0)
    default_vae: OptionalVae = None
    default_loras_min_weight: float = Field(-2.0, ge=-10.0, le=10.0)
    default_loras_max_weight: float = Field(2.0, ge=-10.0, le=10.0)
    default_loras: list[LoraEntry] = Field(default_factory=_empty_loras)
    default_max_lora_number: int = Field(5, ge=1)

    # Sampling.
    default_cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    default_sample_sharpness: float = Field(2.0, ge=0.0, le=30.0)
    default_sampler: SamplerName = "dpmpp_2m_sde_gpu"
    default_scheduler: SchedulerName = "karras"
    default_cfg_tsnr: float = Field(7.0, ge=1.0, le=30.0)
    default_clip_skip: int = Field(2, ge=1, le=12)
    default_overwrite_step: int = Field(-1, ge=-1, le=200)
    default_overwrite_switch: int = Field(-1, ge=-1, le=200)
    default_overwrite_upscale: float = Field(-1.0, ge=-1.0, le=1.0)
    default_inpaint_engine_version: Literal["None", "v1", "v2.5", "v2.6"] = "v2.6"

    # Prompt, styles, performance, batch.
    default_prompt: str = ""
    default_prompt_negative: str = ""
    default_styles: list[str] = Field(default_factory=lambda: ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"])
    default_performance: PerformanceName = Performance.SPEED.value
    available_aspect_ratios: Annotated[list[AspectRatio], Field(min_length=1)] = Field(
        default_factory=lambda: list(SDXL_ASPECT_RATIOS))
    default_aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO
    default_max_image_number: int = Field(32, ge=1)
    default_image_number: int = Field(2, ge=1)
    default_output_format: Literal["png", "jpeg", "webp"] = "png"

    # Outputs and metadata. Foci embeds metadata by default (Fooocus's fallback is False).
    default_save_metadata_to_images: bool = True
    default_metadata_scheme: Literal["fooocus", "a1111"] = "fooocus"
    metadata_created_by: str = ""
    default_black_out_nsfw: bool = False

    # UI state.
    default_image_prompt_checkbox: bool = False
    default_enhance_checkbox: bool = False
    default_advanced_checkbox: bool = False
    default_developer_debug_mode_checkbox: bool = False
    default_image_prompt_advanced_checkbox: bool = False
    default_controlnet_image_count: int = Field(4, ge=1)

    # Integrity and outgoing requests: known SHA-256 per catalogue name (overrides the catalogue), and the
    # non-public hosts, addresses or networks job webhooks may reach (foci.files.netpolicy).
    model_sha256: dict[str, Sha256] = Field(default_factory=dict)
    webhook_allow: list[NonEmptyStr] = Field(default_factory=list)
    # Config keys the field table names for task fields that have no declared key above (read by load_settings).
    extra_task_defaults: dict[str, Any] = Field(default_factory=dict)

    # Files a preset wants downloaded: file name → URL.
    checkpoint_downloads: Downloads = Field(default_factory=dict)
    lora_downloads: Downloads = Field(default_factory=dict)
    embeddings_downloads: Downloads = Field(default_factory=dict)
    vae_downloads: Downloads = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> FociSettings:
        for key, check in _DEPENDENT_CHECKS.items():
            check(getattr(self, key), self.__dict__)
        return self

    def lora_slots(self) -> list[LoraDefault]:
        """``default_loras`` cut or padded with empty slots to ``default_max_lora_number`` (the UI rows)."""
        slots = list(self.default_loras[: self.default_max_lora_number])
        slots += [LoraDefault(True, NONE_NAME, 1.0)] * (self.default_max_lora_number - len(slots))
        return slots

    def effective_default_model(self, prefer_previous: bool = True) -> str:
        """``default_model``, or the first of ``previous_default_models`` present when it is absent (§1.12)."""
        if not prefer_previous or self._checkpoint_exists(self.default_model):
            return self.default_model
        for name in self.previous_default_models:
            if self._checkpoint_exists(name):
                return name
        return self.default_model

    def _checkpoint_exists(self, name: str) -> bool:
        return any((folder / name).is_file() for folder in self.path_checkpoints)

    def task_defaults(self, model: type[GenerationTask] = GenerationTask) -> dict[str, Any]:
        """``GenerationTask`` keyword arguments for a new task: the value of each field's config key (field table)."""
        defaults: dict[str, Any] = {}
        for facts in task_fields(model):
            config = facts.config
            if config is None:
                continue
            if config.convert is not None:
                defaults[facts.name] = CONFIG_CONVERTERS[config.convert](self)
            elif config.key in type(self).model_fields:
                defaults[facts.name] = getattr(self, config.key)
            elif config.key in self.extra_task_defaults:
                defaults[facts.name] = self.extra_task_defaults[config.key]
        return defaults


def _lora_specs(settings: FociSettings) -> list[LoraSpec]:
    return [LoraSpec(name=slot.name, weight=slot.weight, enabled=slot.enabled)
            for slot in settings.lora_slots() if slot.name != NONE_NAME]


# Converters the field table names (``Config.convert``): settings → field value.
CONFIG_CONVERTERS: dict[str, Callable[[FociSettings], Any]] = {
    "effective_default_model": lambda settings: settings.effective_default_model(),
    "lora_slots": _lora_specs,
}


@cache
def task_config_keys(model: type[GenerationTask] = GenerationTask) -> dict[str, str]:
    """Config key → task field, for the keys whose value is a task field's default as it is (no converter)."""
    return {facts.config.key: facts.name for facts in task_fields(model)
            if facts.config is not None and facts.config.convert is None}


# --- keys that depend on earlier keys ------------------------------------------------------------------------


def _aspect_in_list(value: str, resolved: Mapping[str, Any]) -> None:
    if value not in resolved["available_aspect_ratios"]:
        raise ValueError(f"{value} is not in available_aspect_ratios")


def _image_number_in_range(value: int, resolved: Mapping[str, Any]) -> None:
    if value > resolved["default_max_image_number"]:
        raise ValueError(f"{value} is above default_max_image_number {resolved['default_max_image_number']}")


_DEPENDENT_CHECKS = {
    "default_aspect_ratio": _aspect_in_list,
    "default_image_number": _image_number_in_range,
}


def _dynamic_fallback(key: str, resolved: Mapping[str, Any]) -> Any:
    """Fooocus's fallbacks that depend on earlier keys; ``...`` when the key has a plain field default."""
    if key == "default_aspect_ratio":
        ratios = resolved["available_aspect_ratios"]
        return DEFAULT_ASPECT_RATIO if DEFAULT_ASPECT_RATIO in ratios else ratios[0]
    if key == "default_image_number":
        return min(2, resolved["default_max_image_number"])
    if key == "default_max_lora_number":
        return len(resolved["default_loras"]) or 5
    return ...


# Fooocus keys Foci accepts without using them yet (no "unknown key" warning).
_ACCEPTED_UNUSED_KEYS = frozenset({
    "default_selected_image_input_tab_id", "default_uov_method", "default_inpaint_advanced_masking_checkbox",
    "default_inpaint_method", "example_inpaint_prompts", "example_enhance_detection_prompts",
    "default_enhance_tabs", "default_enhance_uov_method", "default_enhance_uov_processing_order",
    "default_enhance_uov_prompt_type", "default_sam_max_detections", "default_save_only_final_enhanced_image",
    "default_invert_mask_checkbox", "default_inpaint_mask_model", "default_enhance_inpaint_mask_model",
    "default_inpaint_mask_cloth_category", "default_inpaint_mask_sam_model",
    "default_describe_apply_prompts_checkbox", "default_describe_content_type",
})
_IP_SLOT_KEY = re.compile(r"^default_ip_(image|type|stop_at|weight)_\d+$")

_EXTRA_TASK_DEFAULTS = "extra_task_defaults"


@cache
def _adapter(model: type[BaseModel], key: str) -> TypeAdapter:
    field = model.model_fields[key]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def _validate(key: str, value: Any, resolved: Mapping[str, Any], known_styles: Collection[str] | None,
              task_model: type[GenerationTask] = GenerationTask) -> Any:
    """The validated value of one key, or ValueError with a one-line reason. A key that is a task field's
    default (field table) must also satisfy that field's type and bounds."""
    task_keys = task_config_keys(task_model)
    try:
        result = value
        if key in FociSettings.model_fields:
            result = _adapter(FociSettings, key).validate_python(value)
        if key in task_keys:
            result_for_task = _adapter(task_model, task_keys[key]).validate_python(result)
            if key not in FociSettings.model_fields:
                result = result_for_task
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{first['msg']}{f' at {where}' if where else ''}") from None
    if key in _DEPENDENT_CHECKS:
        _DEPENDENT_CHECKS[key](result, resolved)
    if key == "default_styles" and known_styles is not None:
        unknown = [name for name in result if name not in known_styles]
        if unknown:
            raise ValueError(f"unknown style(s): {', '.join(unknown)}")
    return result


def _env_candidates(raw: str) -> list[Any]:
    """The literal-parsed value first (when it parses), then the plain string."""
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [raw]
    return [parsed, raw] if parsed != raw else [raw]


# --- files ---------------------------------------------------------------------------------------------------


def _shipped_presets() -> Path:
    return Path(str(files("foci.settings").joinpath("presets")))


def _preset_dirs(root: Path) -> list[Path]:
    """Preset folders, highest priority first: the user's, then the shipped one."""
    return [root / "presets", _shipped_presets()]


def preset_performance(name: str) -> str:
    """The performance a shipped preset selects (its ``default_performance``; Speed when it sets none)."""
    path = _shipped_presets() / f"{name}.json"
    if not re.fullmatch(r"[\w.+-]+", name) or not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available_presets(Path.cwd()))}")
    return str(_read_json_object(path).get("default_performance", Performance.SPEED.value))


def available_presets(root: Path | None = None) -> list[str]:
    """Sorted names of the shipped presets and the user's ``<root>/presets/*.json``."""
    root = Path.cwd() if root is None else Path(root)
    names = {path.stem for folder in _preset_dirs(root) if folder.is_dir() for path in folder.glob("*.json")}
    return sorted(names)


def _find_preset(name: str, root: Path) -> Path | None:
    candidate = Path(name).expanduser()
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    if not re.fullmatch(r"[\w.+-]+", name) or name.startswith("."):
        return None
    for folder in _preset_dirs(root):
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    return None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


class _Layer(NamedTuple):
    label: str
    values: Mapping[str, Any]


def _file_layers(preset: str | None, config_path: Path | None, environ: Mapping[str, str],
                 root: Path) -> list[_Layer]:
    """The file sources, highest priority first."""
    layers: list[_Layer] = []
    if preset is not None:
        preset_file = _find_preset(preset, root)
        if preset_file is None:
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets(root))}")
        layers.append(_Layer(f"preset {preset!r} ({preset_file})", _read_json_object(preset_file)))

    explicit = config_path if config_path is not None else environ.get(CONFIG_ENV) or None
    config_file = Path(explicit).expanduser() if explicit is not None else root / DEFAULT_CONFIG_NAME
    if config_file.is_file():
        layers.append(_Layer(f"config file {config_file}", _read_json_object(config_file)))
    elif explicit is not None:
        raise ConfigError(f"config file {config_file} does not exist")

    default_file = _find_preset("default", root)
    if default_file is not None:
        layers.append(_Layer(f"preset 'default' ({default_file})", _read_json_object(default_file)))
    return layers


def _resolve_paths(values: dict[str, Any], root: Path) -> None:
    def absolute(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else root / path

    for key, value in values.items():
        if isinstance(value, Path):
            values[key] = absolute(value)
        elif key.startswith("path_") and isinstance(value, list):
            values[key] = [absolute(path) for path in value]


def load_settings(*, preset: str | None = None, config_path: Path | None = None,
                  environ: Mapping[str, str] | None = None, root: Path | None = None,
                  known_styles: Collection[str] | None = None,
                  task_model: type[GenerationTask] = GenerationTask) -> tuple[FociSettings, list[str]]:
    """Resolve every key from env > preset > config file > presets/default.json > fallback; return warnings too.

    ``environ`` defaults to ``os.environ``, ``root`` to the current directory. ``known_styles``, when given,
    rejects (with a warning) a ``default_styles`` list naming other styles. Raises :class:`ConfigError` for an
    unknown preset or an unreadable/non-object JSON file.

    Besides the keys of :class:`FociSettings`, every config key the field table of ``task_model`` names is read
    (validated by its task field; no fallback: the field default applies) into ``extra_task_defaults``.
    """
    environ = os.environ if environ is None else environ
    root = (Path.cwd() if root is None else Path(root)).expanduser().resolve()
    layers = _file_layers(preset, config_path, environ, root)
    warnings: list[str] = []
    settings_keys = [key for key in FociSettings.model_fields if key != _EXTRA_TASK_DEFAULTS]
    extra_keys = [key for key in task_config_keys(task_model) if key not in FociSettings.model_fields]

    for layer in layers:
        for key in layer.values:
            if key not in settings_keys and key not in extra_keys and key not in _ACCEPTED_UNUSED_KEYS \
                    and not _IP_SLOT_KEY.match(key):
                warnings.append(f"unknown config key {key!r} in {layer.label} ignored")

    resolved: dict[str, Any] = {}
    for key in [*settings_keys, *extra_keys]:
        candidates: list[tuple[str, list[Any]]] = []
        if key in environ:
            candidates.append((f"environment variable {key}", _env_candidates(environ[key])))
        candidates += [(layer.label, [layer.values[key]]) for layer in layers if key in layer.values]
        for label, values in candidates:
            reasons = []
            for value in values:
                try:
                    resolved[key] = _validate(key, value, resolved, known_styles, task_model)
                    break
                except ValueError as error:
                    reasons.append(str(error))
            if key in resolved:
                break
            warnings.append(f"config key {key!r}: ignoring {values[-1]!r} from {label} ({reasons[0]})")
        if key not in resolved and key in FociSettings.model_fields:
            fallback = _dynamic_fallback(key, resolved)
            field = FociSettings.model_fields[key]
            resolved[key] = field.get_default(call_default_factory=True) if fallback is ... else fallback

    _resolve_paths(resolved, root)
    extra = {key: resolved.pop(key) for key in extra_keys if key in resolved}
    return FociSettings(**resolved, **{_EXTRA_TASK_DEFAULTS: extra}), warnings
