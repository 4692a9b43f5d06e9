"""Generation metadata in Fooocus's two schemes (§1.11): ``fooocus`` (sorted JSON) and ``a1111`` (plain text).

Both writers are pure functions of an :class:`ImageRecord` (no timestamps), so the same image always carries
the same bytes. :func:`task_from_metadata` is their inverse; it also reads metadata written by Fooocus and,
for the ``a1111`` scheme, by AUTOMATIC1111.

Foci extensions to the Fooocus layouts (all ignored by Fooocus's reader):

* fooocus JSON: ``software``, ``device``, ``precision``; ``sag_scale`` / ``perp_neg_scale`` when non-zero.
* a1111 text: ``Styles`` (a Python list literal, so styles need not be guessed back from the prompt; without it,
  as in files written by Fooocus or AUTOMATIC1111, :func:`extract_styles_from_prompt` recovers them),
  ``Refiner switch at`` (A1111's own key) when a refiner is set, ``Foci sampler`` when the A1111 sampler name
  is shared by two Foci samplers (e.g. ``dpmpp_2m_sde`` and ``dpmpp_2m_sde_gpu``), ``Precision`` when not
  ``auto``, ``SAG scale`` / ``Perp-Neg scale`` when non-zero. Values that start with ``"`` are quoted as well,
  so a quoted prompt survives the round trip.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from foci.task import SAMPLERS, GenerationTask, LoraSpec
from foci.text.prompt_plan import split_prompt
from foci.text.styles import FOOOCUS_V2, PROMPT_PLACEHOLDER, StyleLibrary

METADATA_SCHEMES: tuple[str, ...] = ("fooocus", "a1111")
DEFAULT_VAE_LABEL = "Default (model)"
NO_MODEL_LABEL = "None"
DEFAULT_ADAPTIVE_CFG = 7.0

# Foci sampler → the name AUTOMATIC1111 shows; None where A1111 has no equivalent (the Foci name is written).
A1111_SAMPLER_NAMES: dict[str, str | None] = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "heunpp2": None,
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "ddpm": None,
    "lcm": "LCM",
    "tcd": "TCD",
    "restart": "Restart",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": None,
}
# A1111 name → Foci sampler. Where two share a name the ``_gpu`` variant (Fooocus's default) wins.
_SAMPLER_FROM_A1111: dict[str, str] = {}
for _foci_name, _a1111_name in A1111_SAMPLER_NAMES.items():
    if _a1111_name is not None and (_a1111_name not in _SAMPLER_FROM_A1111 or _foci_name.endswith("_gpu")):
        _SAMPLER_FROM_A1111[_a1111_name] = _foci_name
# A1111 samplers that never had a " Karras" variant.
_NO_KARRAS: frozenset[str] = frozenset(
    {"Euler", "Euler a", "Heun", "DPM fast", "DPM adaptive", "LCM", "TCD", "Restart", "DDIM", "UniPC"}
)
_KARRAS_SUFFIX = " Karras"
# A1111 ≥ 1.9 "Schedule type" labels → Foci scheduler (used only when no "Scheduler" key is present).
_A1111_SCHEDULE_TYPES: dict[str, str] = {
    "Automatic": "normal",
    "Uniform": "normal",
    "Normal": "normal",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
    "Simple": "simple",
    "DDIM": "ddim_uniform",
    "Align Your Steps": "align_your_steps",
}

# Task field → key in each scheme, for error messages.
_FOOOCUS_KEYS: dict[str, str] = {
    "guidance_scale": "guidance_scale",
    "aspect_ratio": "resolution",
    "adm_scaler_positive": "adm_guidance",
    "adm_scaler_negative": "adm_guidance",
    "adm_scaler_end": "adm_guidance",
    "freeu": "freeu",
    "loras": "loras",
}
_A1111_KEYS: dict[str, str] = {
    "steps": "Steps",
    "sampler": "Sampler",
    "seed": "Seed",
    "aspect_ratio": "Size",
    "guidance_scale": "CFG scale",
    "sharpness": "Sharpness",
    "adm_scaler_positive": "ADM Guidance",
    "adm_scaler_negative": "ADM Guidance",
    "adm_scaler_end": "ADM Guidance",
    "base_model": "Model",
    "performance": "Performance",
    "scheduler": "Scheduler",
    "vae": "VAE",
    "refiner_model": "Refiner",
    "refiner_switch": "Refiner switch at",
    "adaptive_cfg": "Adaptive CFG",
    "clip_skip": "Clip skip",
    "overwrite_switch": "Overwrite Switch",
    "refiner_swap_method": "Refiner Swap Method",
    "freeu": "FreeU",
    "loras": "Lora weights",
    "precision": "Precision",
    "sag_scale": "SAG scale",
    "perp_neg_scale": "Perp-Neg scale",
}


class MetadataError(ValueError):
    """Metadata that cannot be turned into a task; the message names the offending field."""


class ImageRecord(BaseModel):
    """Everything known about one produced image: the task plus what was resolved while running it."""

    model_config = ConfigDict(extra="forbid")

    task: GenerationTask
    seed: int
    width: int
    height: int
    positive_items: list[str]
    negative_items: list[str]
    prompt_expansion: str = ""
    base_model_name: str
    base_model_hash: str = ""
    refiner_model_name: str | None = None
    refiner_model_hash: str = ""
    vae_name: str | None = None
    loras: list[tuple[str, float, str]] = []
    software: str
    device: str


# --------------------------------------------------------------------------------------------------- writers


def _stem(name: str) -> str:
    """File stem of a model name or path, as Fooocus stores it."""
    return PurePath(name.replace("\\", "/")).stem


def version_label(software: str) -> str:
    """``"Foci 0.1.0"`` → ``"Foci v0.1.0"`` (Fooocus's ``version`` style); other strings unchanged."""
    name, _, number = software.rpartition(" ")
    if name and number[:1].isdigit():
        return f"{name} v{number}"
    return software


def _refiner_stem(record: ImageRecord) -> str | None:
    name = record.refiner_model_name
    if not name or name == NO_MODEL_LABEL:
        return None
    return _stem(name)


def _vae_label(record: ImageRecord) -> str:
    return _stem(record.vae_name) if record.vae_name else DEFAULT_VAE_LABEL


def to_fooocus_json(record: ImageRecord) -> str:
    """The ``fooocus`` scheme payload: sorted-keys JSON of the logged parameters (§1.11) plus Foci's keys."""
    task = record.task
    refiner = _refiner_stem(record)
    data: dict[str, Any] = {
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt,
        "prompt_expansion": record.prompt_expansion,
        "styles": str(list(task.styles)),
        "performance": task.performance,
        "steps": task.effective_steps,
        "resolution": str((record.width, record.height)),
        "guidance_scale": task.guidance_scale,
        "sharpness": task.sharpness,
        "adm_guidance": str((task.adm_scaler_positive, task.adm_scaler_negative, task.adm_scaler_end)),
        "base_model": _stem(record.base_model_name),
        "base_model_hash": record.base_model_hash,
        "refiner_model": refiner or NO_MODEL_LABEL,
        "refiner_switch": task.refiner_switch,
        "sampler": task.sampler,
        "scheduler": task.scheduler,
        "vae": _vae_label(record),
        "seed": str(record.seed),
        "loras": [[_stem(name), weight, lora_hash] for name, weight, lora_hash in record.loras],
        "full_prompt": list(record.positive_items),
        "full_negative_prompt": list(record.negative_items),
        "metadata_scheme": "fooocus",
        "version": version_label(record.software),
        "software": record.software,
        "device": record.device,
        "precision": task.precision,
    }
    if refiner is not None:
        data["refiner_model_hash"] = record.refiner_model_hash
    if task.overwrite_switch > 0:
        data["overwrite_switch"] = task.overwrite_switch
    if task.refiner_swap_method != "joint":
        data["refiner_swap_method"] = task.refiner_swap_method
    if task.adaptive_cfg != DEFAULT_ADAPTIVE_CFG:
        data["adaptive_cfg"] = task.adaptive_cfg
    if task.clip_skip > 1:
        data["clip_skip"] = task.clip_skip
    if task.freeu.enabled:
        data["freeu"] = str((task.freeu.b1, task.freeu.b2, task.freeu.s1, task.freeu.s2))
    if task.sag_scale > 0:
        data["sag_scale"] = task.sag_scale
    if task.perp_neg_scale > 0:
        data["perp_neg_scale"] = task.perp_neg_scale
    for index, (name, weight, _) in enumerate(record.loras, start=1):
        data[f"lora_combined_{index}"] = f"{_stem(name)} : {weight}"
    return json.dumps(data, sort_keys=True)


def _quote(value: object) -> str:
    """A1111 quoting: JSON-quote a value containing ``,`` ``:`` or a newline (or starting with a quote)."""
    text = str(value)
    if any(char in text for char in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_sampler_label(sampler: str, scheduler: str) -> str:
    """A1111 sampler label; `` Karras`` is appended for the karras scheduler where A1111 had that variant."""
    name = A1111_SAMPLER_NAMES.get(sampler)
    if name is None:
        return sampler
    if scheduler == "karras" and name not in _NO_KARRAS:
        return name + _KARRAS_SUFFIX
    return name


def to_a1111_text(record: ImageRecord) -> str:
    """The ``a1111`` scheme payload: prompt, ``Negative prompt:`` line, one line of ``Key: value`` pairs."""
    task = record.task
    a1111_name = A1111_SAMPLER_NAMES.get(task.sampler)
    params: list[tuple[str, object]] = [
        ("Steps", task.effective_steps),
        ("Sampler", a1111_sampler_label(task.sampler, task.scheduler)),
    ]
    if a1111_name is not None and _SAMPLER_FROM_A1111[a1111_name] != task.sampler:
        params.append(("Foci sampler", task.sampler))
    params += [
        ("Seed", record.seed),
        ("Size", f"{record.width}x{record.height}"),
        ("CFG scale", task.guidance_scale),
        ("Sharpness", task.sharpness),
        ("ADM Guidance", str((task.adm_scaler_positive, task.adm_scaler_negative, task.adm_scaler_end))),
        ("Model", _stem(record.base_model_name)),
        ("Model hash", record.base_model_hash),
        ("Performance", task.performance),
        ("Scheduler", task.scheduler),
        ("VAE", _vae_label(record)),
        ("Raw prompt", task.prompt),
        ("Raw negative prompt", task.negative_prompt),
        ("Styles", str(list(task.styles))),
    ]
    refiner = _refiner_stem(record)
    if refiner is not None:
        params += [
            ("Refiner", refiner),
            ("Refiner hash", record.refiner_model_hash),
            ("Refiner switch at", task.refiner_switch),
        ]
    if task.adaptive_cfg != DEFAULT_ADAPTIVE_CFG:
        params.append(("Adaptive CFG", task.adaptive_cfg))
    if task.clip_skip > 1:
        params.append(("Clip skip", task.clip_skip))
    if task.overwrite_switch > 0:
        params.append(("Overwrite Switch", task.overwrite_switch))
    if task.refiner_swap_method != "joint":
        params.append(("Refiner Swap Method", task.refiner_swap_method))
    if task.freeu.enabled:
        params.append(("FreeU", str((task.freeu.b1, task.freeu.b2, task.freeu.s1, task.freeu.s2))))
    if task.sag_scale > 0:
        params.append(("SAG scale", task.sag_scale))
    if task.perp_neg_scale > 0:
        params.append(("Perp-Neg scale", task.perp_neg_scale))
    if task.precision != "auto":
        params.append(("Precision", task.precision))
    if record.loras:
        params.append(("Lora hashes", ", ".join(f"{_stem(n)}: {h}" for n, _, h in record.loras)))
        params.append(("Lora weights", ", ".join(f"{_stem(n)}: {w}" for n, w, _ in record.loras)))
    params.append(("Version", version_label(record.software)))

    line = ", ".join(f"{key}: {_quote(value)}" for key, value in params)
    positive = ", ".join(record.positive_items)
    negative = ", ".join(record.negative_items)
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{positive}{negative_line}\n{line}".strip()


# --------------------------------------------------------------------------------------------------- readers


def _fail(field: str, message: str) -> MetadataError:
    return MetadataError(f"metadata field {field!r}: {message}")


def _as_text(field: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(field, f"expected text, got {type(value).__name__}")
    return value


def _as_int(field: str, value: object) -> int:
    if isinstance(value, bool):
        raise _fail(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise _fail(field, f"expected an integer, got {value!r}")


def _as_float(field: str, value: object) -> float:
    if isinstance(value, bool):
        raise _fail(field, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _fail(field, f"expected a number, got {value!r}")


def _as_numbers(field: str, value: object, count: int) -> list[float]:
    """``"(1.5, 0.8, 0.3)"`` or a list of ``count`` numbers."""
    if isinstance(value, str):
        parts = value.strip().strip("()[]").split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _fail(field, f"expected {count} numbers, got {value!r}")
    if len(parts) != count:
        raise _fail(field, f"expected {count} numbers, got {value!r}")
    return [_as_float(field, part.strip() if isinstance(part, str) else part) for part in parts]


def _as_text_list(field: str, value: object) -> list[str]:
    """A list of strings, or its Python/JSON literal such as ``"['Fooocus V2', 'Fooocus Sharp']"``."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip()) if value.strip() else []
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise _fail(field, f"expected a list of names, got {value!r}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise _fail(field, f"expected a list of names, got {value!r}")


def _as_size(field: str, value: object, separator: str) -> str:
    """``"(1152, 896)"`` / ``[1152, 896]`` / ``"1152x896"`` → ``"1152*896"``."""
    if isinstance(value, str) and separator in value:
        parts: list[object] = list(value.split(separator))
    elif isinstance(value, str):
        parts = list(value.strip().strip("()[]").split(","))
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _fail(field, f"expected a width and height, got {value!r}")
    if len(parts) != 2:
        raise _fail(field, f"expected a width and height, got {value!r}")
    width, height = (_as_int(field, part.strip() if isinstance(part, str) else part) for part in parts)
    return f"{width}*{height}"


def _resolve(name: str, candidates: Iterable[str]) -> str:
    """Map a stored stem back to an available file name (same stem), else keep it as stored."""
    options = list(candidates)
    if name in options:
        return name
    for option in options:
        if _stem(option) == name:
            return option
    return name


def _optional_model(
    field: str, value: object, candidates: Iterable[str], none_labels: tuple[str, ...]
) -> str | None:
    text = _as_text(field, value).strip()
    if not text or text in none_labels:
        return None
    return _resolve(text, candidates)


def _build_task(fields: dict[str, Any], key_names: dict[str, str]) -> GenerationTask:
    """Validate collected fields into a task, naming the metadata key of the first invalid value."""
    try:
        return GenerationTask(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        task_field = location[0] if location else "aspect_ratio"
        key = key_names.get(task_field, task_field)
        detail = first.get("msg", str(error))
        raise _fail(key, detail) from None


def _field(data: dict[str, Any], key: str, convert: Callable[[str, object], Any]) -> Any:
    return convert(key, data[key])


def _task_from_fooocus(
    data: dict[str, Any], model_files: Iterable[str], lora_files: Iterable[str], vae_files: Iterable[str]
) -> GenerationTask:
    fields: dict[str, Any] = {"metadata_scheme": "fooocus", "save_metadata": True}
    # Fooocus omits clip_skip when it is 1, so a record written by Fooocus/Foci (it has "version") means 1.
    if "version" in data:
        fields["clip_skip"] = 1
    text_keys = {"prompt": "prompt", "negative_prompt": "negative_prompt", "performance": "performance",
                 "sampler": "sampler", "scheduler": "scheduler", "refiner_swap_method": "refiner_swap_method",
                 "precision": "precision"}
    for key, task_field in text_keys.items():
        if key in data:
            fields[task_field] = _field(data, key, _as_text)
    int_keys = {"steps": "steps", "seed": "seed", "clip_skip": "clip_skip",
                "overwrite_switch": "overwrite_switch"}
    for key, task_field in int_keys.items():
        if key in data:
            fields[task_field] = _field(data, key, _as_int)
    float_keys = {"guidance_scale": "guidance_scale", "sharpness": "sharpness",
                  "refiner_switch": "refiner_switch", "adaptive_cfg": "adaptive_cfg",
                  "sag_scale": "sag_scale", "perp_neg_scale": "perp_neg_scale"}
    for key, task_field in float_keys.items():
        if key in data:
            fields[task_field] = _field(data, key, _as_float)
    if "styles" in data:
        fields["styles"] = _field(data, "styles", _as_text_list)
    if "resolution" in data:
        fields["aspect_ratio"] = _as_size("resolution", data["resolution"], "x")
    fields.update(_guidance_fields(data, adm_key="adm_guidance", freeu_key="freeu"))
    if "base_model" in data:
        fields["base_model"] = _resolve(_as_text("base_model", data["base_model"]).strip(), model_files)
    if "refiner_model" in data:
        fields["refiner_model"] = _optional_model(
            "refiner_model", data["refiner_model"], model_files, (NO_MODEL_LABEL,)
        )
    if "vae" in data:
        fields["vae"] = _optional_model("vae", data["vae"], vae_files, (DEFAULT_VAE_LABEL, NO_MODEL_LABEL))
    fields["loras"] = _fooocus_loras(data, list(lora_files))
    return _build_task(fields, _FOOOCUS_KEYS)


def _fooocus_loras(data: dict[str, Any], lora_files: list[str]) -> list[LoraSpec]:
    """LoRAs from ``loras`` ([stem, weight, hash] rows), else from the ``lora_combined_N`` strings."""
    pairs: list[tuple[str, float]] = []
    if "loras" in data:
        rows = data["loras"]
        if not isinstance(rows, list):
            raise _fail("loras", f"expected a list of [name, weight, hash], got {rows!r}")
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 2 or not isinstance(row[0], str):
                raise _fail("loras", f"expected [name, weight, hash], got {row!r}")
            pairs.append((row[0], _as_float("loras", row[1])))
    else:
        combined = sorted(
            (key for key in data if re.fullmatch(r"lora_combined_\d+", key)),
            key=lambda key: int(key.rsplit("_", 1)[1]),
        )
        for key in combined:
            name, separator, weight = _as_text(key, data[key]).rpartition(" : ")
            if not separator:
                raise _fail(key, f"expected 'name : weight', got {data[key]!r}")
            pairs.append((name, _as_float(key, weight)))
    return [LoraSpec(name=_resolve(name, lora_files), weight=weight) for name, weight in pairs if name]


_PARAM = re.compile(r'\s*(\w[\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(line: str) -> dict[str, str]:
    """``"Steps: 30, Sampler: Euler a, Raw prompt: \\"a, b\\""`` → {key: unquoted value}."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"') and len(value) >= 2 and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _fail(key, f"badly quoted value {value!r}") from None
        params[key] = value
    return params


def _split_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 text into (positive, negative, parameters); the last line must carry ``Steps:``."""
    lines = text.strip().split("\n")
    params = parse_a1111_parameters(lines[-1]) if lines and lines[-1].strip() else {}
    if "Steps" not in params:
        raise MetadataError("a1111 metadata must end with a parameter line starting 'Steps: …'")
    positive: list[str] = []
    negative: list[str] = []
    target = positive
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:"):].lstrip(" ")
        target.append(line)
    return "\n".join(positive).strip(), "\n".join(negative).strip(), params


# --------------------------------------------------------------------------------------------- style recovery

_SEPARATOR = ", "
_SEARCH_BUDGET = 4000  # search nodes per call; far above what real prompts need


def _items_text(template: str) -> str:
    """A style text as it appears in a written prompt: its non-empty lines, each an item, joined by ``", "``."""
    return _SEPARATOR.join(line for line in template.splitlines() if line)


def _strip_front(text: str, piece: str) -> str | None:
    """``text`` without the leading items ``piece`` (followed by ``", "`` or the end); None if it does not lead."""
    if text == piece:
        return ""
    if text.startswith(piece + _SEPARATOR):
        return text[len(piece) + len(_SEPARATOR):]
    return None


def _remove_items(text: str, piece: str) -> str | None:
    """``text`` without the first occurrence of the whole items ``piece``; None if it holds no such occurrence."""
    start = 0
    while (index := text.find(piece, start)) >= 0:
        end = index + len(piece)
        before_ok = index == 0 or text[:index].endswith(_SEPARATOR)
        after_ok = end == len(text) or text.startswith(_SEPARATOR, end)
        if before_ok and after_ok:
            head = text[:index].removesuffix(_SEPARATOR) if index else ""
            tail = text[end:].removeprefix(_SEPARATOR)
            return _SEPARATOR.join(part for part in (head, tail) if part)
        start = index + 1
    return None


def _item_starts(text: str) -> list[int]:
    """Offsets in ``text`` where an item may start: 0 and just after every ``", "``."""
    starts = [0]
    index = text.find(_SEPARATOR)
    while index >= 0:
        starts.append(index + len(_SEPARATOR))
        index = text.find(_SEPARATOR, index + 1)
    return starts


@dataclass(frozen=True)
class _Template:
    """One library style in written form."""

    name: str
    positive: str
    negative: str


@dataclass(frozen=True)
class _Parse:
    """A way of reading a prompt pair: styles un-wrapped so far, what is left, and the prompt they wrapped."""

    styles: tuple[str, ...]
    positive: str
    negative: str
    prompt: str | None
    displaced: int = 0
    """Styles whose positive text was found after the front (possible only without a placeholder style)."""


class _StyleSearch:
    """Depth-first search for the longest sequence of styles that un-wraps a positive/negative pair.

    Fooocus writes the selected styles' positive items first (each with the prompt substituted) and their negative
    items first, both in selection order; so each step peels one style off the front of both texts. Every
    placeholder style must have wrapped the same prompt. The search is bounded by a node budget.
    """

    def __init__(self, templates: Sequence[_Template], hint: str | None) -> None:
        self.templates = templates
        self.hint = hint
        self.budget = _SEARCH_BUDGET

    def _score(self, parse: _Parse) -> tuple[int, bool, int]:
        return len(parse.styles), self.hint is not None and parse.prompt == self.hint, -parse.displaced

    def _prompt_options(self, text: str, template: str, known: str | None) -> list[tuple[str, str]]:
        """(prompt, rest) pairs for which ``text`` starts with ``template`` filled with that prompt."""
        if known is not None:
            rest = _strip_front(text, template.replace(PROMPT_PLACEHOLDER, known))
            return [] if rest is None else [(known, rest)]
        head, _, tail = template.partition(PROMPT_PLACEHOLDER)
        if not text.startswith(head):
            return []
        body = text[len(head):]
        literal = tail.partition(PROMPT_PLACEHOLDER)[0]
        if literal:
            ends = []
            index = body.find(literal)
            while index >= 0:
                ends.append(index)
                index = body.find(literal, index + 1)
        else:
            ends = [start - len(_SEPARATOR) for start in _item_starts(body)[1:]] + [len(body)]
        candidates = [self.hint] if self.hint is not None else []
        candidates += [body[:end] for end in sorted(ends, reverse=True)]
        options: list[tuple[str, str]] = []
        for prompt in dict.fromkeys(candidates):
            rest = _strip_front(text, template.replace(PROMPT_PLACEHOLDER, prompt))
            if rest is not None:
                options.append((prompt, rest))
        return options

    def run(self, positive: str, negative: str, used: tuple[str, ...] = (), prompt: str | None = None,
            displaced: int = 0) -> _Parse:
        """The best parse of the texts (most styles; then the one agreeing with the hint; then in order)."""
        best = _Parse(used, positive, negative, prompt, displaced)
        for template in self.templates:
            if self.budget <= 0:
                break
            if template.name in used:
                continue
            negative_rest = _strip_front(negative, template.negative) if template.negative else negative
            if negative_rest is None:
                continue
            moved = 0
            if not template.positive:
                options = [(prompt, positive)]
            elif PROMPT_PLACEHOLDER in template.positive:
                options = self._prompt_options(positive, template.positive, prompt)
            elif (front := _strip_front(positive, template.positive)) is not None:
                options = [(prompt, front)]
            else:
                rest = _remove_items(positive, template.positive)
                options, moved = ([], 0) if rest is None else ([(prompt, rest)], 1)
            for found_prompt, positive_rest in options:
                self.budget -= 1
                parse = self.run(positive_rest, negative_rest, (*used, template.name), found_prompt,
                                 displaced + moved)
                if self._score(parse) > self._score(best):
                    best = parse
        return best


def _split_expansion(text: str, prompt: str, *, skip_first: bool) -> tuple[str, str] | None:
    """(text before, expansion) when ``text`` ends with a Fooocus V2 expansion of ``prompt``, else None.

    The expansion is the last item sequence and starts with the prompt and a comma; its words never repeat a
    token of the prompt, so the last such start is the right one. ``skip_first`` ignores offset 0 (the prompt
    item itself when no style wrapped the prompt).
    """
    lead = prompt + _SEPARATOR
    starts = [start for start in _item_starts(text) if text.startswith(lead, start) and len(text) > start + len(lead)]
    if skip_first:
        starts = [start for start in starts if start > 0]
    if not prompt or not starts:
        return None
    start = starts[-1]
    return text[:start].removesuffix(_SEPARATOR), text[start:]


def extract_styles_from_prompt(
    positive: str,
    negative: str,
    library: StyleLibrary,
    *,
    raw_prompt: str | None = None,
    expansion: str | None = None,
) -> tuple[list[str], str, str]:
    """Recover the styles that produced a written prompt pair: (styles, the real prompt, the real negative).

    ``positive`` / ``negative`` are the full texts of an a1111-scheme record (every encoded item joined by
    ``", "``). Styles of ``library`` whose positive template (``{prompt}`` filled with one common prompt) and
    negative text lead the texts are peeled off in turn; they come back in the order they were applied. When
    nothing matches, both texts come back unchanged and the list is empty.

    ``Fooocus V2`` is added first when the positive text ends with a prompt expansion: ``expansion`` (the
    ``Prompt expansion`` value) when given, otherwise an item run that starts with the prompt and a comma, which
    can be told only when the prompt is known: wrapped by a style, or the main line of ``raw_prompt``. Text left
    after the wrapped prompt (extra prompt lines) becomes further lines of the returned prompt.
    """
    templates = [
        _Template(name, _items_text(style.prompt), _items_text(style.negative_prompt))
        for name in library.template_names()
        if (style := library.get(name)).prompt.strip() or style.negative_prompt.strip()
    ]
    hint = (split_prompt(raw_prompt, "").main or None) if raw_prompt else None
    parse = _StyleSearch(templates, hint).run(positive, negative)
    rest = parse.positive
    v2 = False
    if expansion:
        if rest == expansion:
            rest, v2 = "", True
        elif rest.endswith(_SEPARATOR + expansion):
            rest, v2 = rest[: -len(_SEPARATOR + expansion)], True
    else:
        anchor = parse.prompt if parse.prompt is not None else hint
        split = _split_expansion(rest, anchor or "", skip_first=parse.prompt is None)
        if split is not None:
            rest, v2 = split[0], True
    if not parse.styles and not v2:
        return [], positive, negative
    prompt = rest if parse.prompt is None else "\n".join(part for part in (parse.prompt, rest) if part)
    return ([FOOOCUS_V2] if v2 else []) + list(parse.styles), prompt, parse.negative


def _a1111_sampler(params: dict[str, str]) -> tuple[str | None, bool]:
    """(Foci sampler or None, whether the label carried " Karras")."""
    if "Foci sampler" in params:
        return params["Foci sampler"], params.get("Sampler", "").endswith(_KARRAS_SUFFIX)
    label = params.get("Sampler")
    if label is None:
        return None, False
    karras = label.endswith(_KARRAS_SUFFIX)
    base = label[: -len(_KARRAS_SUFFIX)] if karras else label
    if base in _SAMPLER_FROM_A1111:
        return _SAMPLER_FROM_A1111[base], karras
    if label in SAMPLERS:
        return label, False
    raise _fail("Sampler", f"unknown sampler {label!r}")


def _task_from_a1111(
    text: str,
    model_files: Iterable[str],
    lora_files: Iterable[str],
    vae_files: Iterable[str],
    style_library: StyleLibrary | None,
) -> GenerationTask:
    positive, negative, params = _split_a1111(text)
    fields: dict[str, Any] = {
        "metadata_scheme": "a1111",
        "save_metadata": True,
        "prompt": params.get("Raw prompt", positive),
        "negative_prompt": params.get("Raw negative prompt", negative),
        # A1111 (and Fooocus's a1111 writer) omit "Clip skip" when it is 1.
        "clip_skip": _as_int("Clip skip", params["Clip skip"]) if "Clip skip" in params else 1,
        "steps": _as_int("Steps", params["Steps"]),
    }
    sampler, karras = _a1111_sampler(params)
    if sampler is not None:
        fields["sampler"] = sampler
    if "Scheduler" in params:
        fields["scheduler"] = params["Scheduler"]
    elif "Schedule type" in params:
        if params["Schedule type"] not in _A1111_SCHEDULE_TYPES:
            raise _fail("Schedule type", f"unknown schedule {params['Schedule type']!r}")
        fields["scheduler"] = _A1111_SCHEDULE_TYPES[params["Schedule type"]]
    elif karras:
        fields["scheduler"] = "karras"
    for key, task_field in (("Seed", "seed"), ("Overwrite Switch", "overwrite_switch")):
        if key in params:
            fields[task_field] = _as_int(key, params[key])
    float_keys = {"CFG scale": "guidance_scale", "Sharpness": "sharpness",
                  "Refiner switch at": "refiner_switch", "Adaptive CFG": "adaptive_cfg",
                  "SAG scale": "sag_scale", "Perp-Neg scale": "perp_neg_scale"}
    for key, task_field in float_keys.items():
        if key in params:
            fields[task_field] = _as_float(key, params[key])
    for key, task_field in (("Performance", "performance"), ("Refiner Swap Method", "refiner_swap_method"),
                            ("Precision", "precision")):
        if key in params:
            fields[task_field] = params[key]
    if "Styles" in params:
        fields["styles"] = _as_text_list("Styles", params["Styles"])
    else:  # written by Fooocus or AUTOMATIC1111: un-wrap the styles from the full prompt texts
        library = style_library if style_library is not None else StyleLibrary.load()
        styles, real_prompt, real_negative = extract_styles_from_prompt(
            positive, negative, library, raw_prompt=params.get("Raw prompt"),
            expansion=params.get("Prompt expansion"))
        fields.update(styles=styles, prompt=params.get("Raw prompt", real_prompt),
                      negative_prompt=params.get("Raw negative prompt", real_negative))
    if "Size" in params:
        fields["aspect_ratio"] = _as_size("Size", params["Size"], "x")
    fields.update(_guidance_fields(params, adm_key="ADM Guidance", freeu_key="FreeU"))
    if "Model" in params:
        fields["base_model"] = _resolve(params["Model"].strip(), model_files)
    if "Refiner" in params:
        fields["refiner_model"] = _optional_model(
            "Refiner", params["Refiner"], model_files, (NO_MODEL_LABEL,)
        )
    if "VAE" in params:
        fields["vae"] = _optional_model("VAE", params["VAE"], vae_files, (DEFAULT_VAE_LABEL, NO_MODEL_LABEL))
    fields["loras"] = _a1111_loras(params.get("Lora weights", ""), list(lora_files))
    return _build_task(fields, _A1111_KEYS)


def _a1111_loras(weights: str, lora_files: list[str]) -> list[LoraSpec]:
    loras: list[LoraSpec] = []
    for entry in filter(None, (part.strip() for part in weights.split(", "))):
        name, separator, weight = entry.rpartition(":")
        if not separator or not name.strip():
            raise _fail("Lora weights", f"expected 'name: weight', got {entry!r}")
        resolved = _resolve(name.strip(), lora_files)
        loras.append(LoraSpec(name=resolved, weight=_as_float("Lora weights", weight)))
    return loras



def _guidance_fields(values: Mapping[str, Any], *, adm_key: str, freeu_key: str) -> dict[str, Any]:
    """ADM scalers "(pos, neg, end)" and FreeU "(b1, b2, s1, s2)" as task fields, under either scheme's key."""
    fields: dict[str, Any] = {}
    if adm_key in values:
        positive, negative, end = _as_numbers(adm_key, values[adm_key], 3)
        fields.update(adm_scaler_positive=positive, adm_scaler_negative=negative, adm_scaler_end=end)
    if freeu_key in values:
        b1, b2, s1, s2 = _as_numbers(freeu_key, values[freeu_key], 4)
        fields["freeu"] = {"enabled": True, "b1": b1, "b2": b2, "s1": s1, "s2": s2}
    return fields

def task_from_metadata(
    payload: str | dict[str, Any],
    scheme: str | None = None,
    *,
    model_files: Iterable[str] = (),
    lora_files: Iterable[str] = (),
    vae_files: Iterable[str] = (),
    style_library: StyleLibrary | None = None,
) -> GenerationTask:
    """Rebuild a task from either scheme's payload (the inverse of both writers).

    ``scheme`` None picks ``fooocus`` for a dict (or a string holding a JSON object), ``a1111`` for other
    text. Metadata stores model stems; a file in ``model_files`` / ``lora_files`` / ``vae_files`` with the
    same stem replaces the stem. Unknown keys are ignored. Malformed input raises :class:`MetadataError` (a
    ``ValueError``) naming the field. Settings metadata does not carry (image number, output format, developer
    overwrites other than the refiner switch) keep their defaults; steps and size are the effective ones.

    a1111 text without a ``Styles`` key (files written by Fooocus or AUTOMATIC1111) gets its styles un-wrapped
    from the prompt texts with :func:`extract_styles_from_prompt`, against ``style_library`` (default: the
    shipped styles); no style found means no style selected.
    """
    if scheme is not None and scheme not in METADATA_SCHEMES:
        choices = ", ".join(METADATA_SCHEMES)
        raise MetadataError(f"unknown metadata scheme {scheme!r}; expected one of {choices}")
    data: object = payload
    if isinstance(payload, str) and scheme != "a1111":
        stripped = payload.strip()
        if stripped.startswith("{") or scheme == "fooocus":
            try:
                data = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError) as error:
                raise MetadataError(f"fooocus metadata is not valid JSON: {error}") from None
    if scheme is None:
        scheme = "fooocus" if isinstance(data, dict) else "a1111"
    if scheme == "fooocus":
        if not isinstance(data, dict):
            raise MetadataError(f"fooocus metadata must be a JSON object, got {type(data).__name__}")
        return _task_from_fooocus(data, model_files, lora_files, vae_files)
    if not isinstance(data, str):
        raise MetadataError(f"a1111 metadata must be text, got {type(data).__name__}")
    return _task_from_a1111(data, model_files, lora_files, vae_files, style_library)
