"""Generation metadata in Fooocus's two schemes (§1.11): ``fooocus`` (sorted JSON) and ``a1111`` (plain text).

Both writers are pure functions of an :class:`ImageRecord` (no timestamps), so the same image always carries
the same bytes. :func:`task_from_metadata` is their inverse; it also reads metadata written by Fooocus and,
for the ``a1111`` scheme, by AUTOMATIC1111.

Writers and readers are loops over the field table (:mod:`foci.fields`): each task field names its key in each
scheme (``fooocus=`` / ``a1111=``), when the key is left out, and, for a value that is not written as the plain
field value, a codec of :data:`FOOOCUS_CODECS` / :data:`A1111_CODECS`. The a1111 line keeps the order of
:data:`A1111_KEY_ORDER` (a key it does not list goes before the LoRAs).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from foci.fields import FieldFacts, Meta, task_fields
from foci.records.style_recovery import extract_styles_from_prompt
from foci.task import SAMPLERS, GenerationTask, LoraSpec
from foci.text.styles import StyleLibrary

__all__ = ["A1111_CODECS", "FOOOCUS_CODECS", "ImageRecord", "MetadataError", "a1111_sampler_label",
           "extract_styles_from_prompt", "parse_a1111_parameters", "task_from_metadata", "to_a1111_text",
           "to_fooocus_json", "version_label"]

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

# The a1111 parameter line, in this order (a key not listed goes before "Lora hashes").
A1111_KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Foci sampler", "Seed", "Size", "CFG scale", "Sharpness", "ADM Guidance", "Model",
    "Model hash", "Performance", "Scheduler", "VAE", "Raw prompt", "Raw negative prompt", "Styles", "Refiner",
    "Refiner hash", "Refiner switch at", "Adaptive CFG", "Clip skip", "Overwrite Switch", "Refiner Swap Method",
    "FreeU", "SAG scale", "Perp-Neg scale", "Precision", "Lora hashes", "Lora weights", "Version",
)


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


def _fooocus_loras(data: Mapping[str, Any], lora_files: list[str]) -> list[LoraSpec]:
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


def _a1111_sampler(params: Mapping[str, Any]) -> tuple[str | None, bool]:
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


def _a1111_loras(weights: str, lora_files: list[str]) -> list[LoraSpec]:
    loras: list[LoraSpec] = []
    for entry in filter(None, (part.strip() for part in weights.split(", "))):
        name, separator, weight = entry.rpartition(":")
        if not separator or not name.strip():
            raise _fail("Lora weights", f"expected 'name: weight', got {entry!r}")
        resolved = _resolve(name.strip(), lora_files)
        loras.append(LoraSpec(name=resolved, weight=_as_float("Lora weights", weight)))
    return loras


# --------------------------------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class _Source:
    """What a reader knows besides the key values: the files present, the style library, the a1111 prompt texts."""

    model_files: list[str]
    lora_files: list[str]
    vae_files: list[str]
    style_library: StyleLibrary | None = None
    positive: str = ""
    negative: str = ""


Pairs = list[tuple[str, object]]
Reader = Callable[[Mapping[str, Any], str, _Source], dict[str, Any]]


@dataclass(frozen=True)
class Codec:
    """How a field (or the fields sharing a key) is written and read when it is not one plain value.

    ``write(record, key)`` returns the (key, value) pairs to write (none: the key is left out); ``read(values,
    key, source)`` returns task fields. Either may be None: the plain value is written or read then.
    """

    write: Callable[[ImageRecord, str], Pairs] | None = None
    read: Reader | None = None


def _tuple_text(*values: float) -> str:
    return str(tuple(values))


def _adm_pairs(record: ImageRecord, key: str) -> Pairs:
    task = record.task
    return [(key, _tuple_text(task.adm_scaler_positive, task.adm_scaler_negative, task.adm_scaler_end))]


def _read_adm(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    positive, negative, end = _as_numbers(key, values[key], 3)
    return {"adm_scaler_positive": positive, "adm_scaler_negative": negative, "adm_scaler_end": end}


def _freeu_pairs(record: ImageRecord, key: str) -> Pairs:
    freeu = record.task.freeu
    return [(key, _tuple_text(freeu.b1, freeu.b2, freeu.s1, freeu.s2))] if freeu.enabled else []


def _read_freeu(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    b1, b2, s1, s2 = _as_numbers(key, values[key], 4)
    return {"freeu": {"enabled": True, "b1": b1, "b2": b2, "s1": s1, "s2": s2}}


def _read_size(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    return {"aspect_ratio": _as_size(key, values[key], "x")} if key in values else {}


def _read_base_model(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    return {"base_model": _resolve(_as_text(key, values[key]).strip(), source.model_files)}


def _read_refiner(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    return {"refiner_model": _optional_model(key, values[key], source.model_files, (NO_MODEL_LABEL,))}


def _read_vae(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    return {"vae": _optional_model(key, values[key], source.vae_files, (DEFAULT_VAE_LABEL, NO_MODEL_LABEL))}


def _styles_text(record: ImageRecord, key: str) -> Pairs:
    return [(key, str(list(record.task.styles)))]


def _read_styles(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    return {"styles": _as_text_list(key, values[key])} if key in values else {}


def _read_a1111_styles(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    """``Styles`` when written (by Foci); else, as in files of Fooocus or AUTOMATIC1111, the styles un-wrapped
    from the prompt texts, which also gives the real prompts."""
    if key in values:
        return _read_styles(values, key, source)
    library = source.style_library if source.style_library is not None else StyleLibrary.load()
    styles, prompt, negative = extract_styles_from_prompt(
        source.positive, source.negative, library, raw_prompt=values.get("Raw prompt"),
        expansion=values.get("Prompt expansion"))
    return {"styles": styles, "prompt": values.get("Raw prompt", prompt),
            "negative_prompt": values.get("Raw negative prompt", negative)}


def _loras_fooocus(record: ImageRecord, key: str) -> Pairs:
    rows = [[_stem(name), weight, lora_hash] for name, weight, lora_hash in record.loras]
    combined = [(f"lora_combined_{index}", f"{_stem(name)} : {weight}")
                for index, (name, weight, _) in enumerate(record.loras, start=1)]
    return [(key, rows), *combined]


def _loras_a1111(record: ImageRecord, key: str) -> Pairs:
    if not record.loras:
        return []
    return [("Lora hashes", ", ".join(f"{_stem(n)}: {h}" for n, _, h in record.loras)),
            (key, ", ".join(f"{_stem(n)}: {w}" for n, w, _ in record.loras))]


def _a1111_sampler_pairs(record: ImageRecord, key: str) -> Pairs:
    task = record.task
    pairs: Pairs = [(key, a1111_sampler_label(task.sampler, task.scheduler))]
    a1111_name = A1111_SAMPLER_NAMES.get(task.sampler)
    if a1111_name is not None and _SAMPLER_FROM_A1111[a1111_name] != task.sampler:
        pairs.append(("Foci sampler", task.sampler))
    return pairs


def _read_a1111_sampler(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    sampler, _ = _a1111_sampler(values)
    return {} if sampler is None else {"sampler": sampler}


def _read_a1111_scheduler(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    """``Scheduler`` (Foci), else A1111's ``Schedule type``, else karras when the sampler label said so."""
    if key in values:
        return {"scheduler": values[key]}
    if "Schedule type" in values:
        if values["Schedule type"] not in _A1111_SCHEDULE_TYPES:
            raise _fail("Schedule type", f"unknown schedule {values['Schedule type']!r}")
        return {"scheduler": _A1111_SCHEDULE_TYPES[values["Schedule type"]]}
    return {"scheduler": "karras"} if _a1111_sampler(values)[1] else {}


def _model_pairs(name_key: str, hash_key: str) -> Callable[[ImageRecord, str], Pairs]:
    def pairs(record: ImageRecord, key: str) -> Pairs:
        return [(key, _stem(record.base_model_name)), (hash_key, record.base_model_hash)]
    return pairs


def _value(get: Callable[[ImageRecord], object]) -> Callable[[ImageRecord, str], Pairs]:
    """A writer of one value computed from the record."""
    return lambda record, key: [(key, get(record))]


def _if_refiner(get: Callable[[ImageRecord], object], hash_key: str | None = None,
                otherwise: object = None) -> Callable[[ImageRecord, str], Pairs]:
    """A writer for refiner facts: the value (and the refiner hash) with a refiner, else ``otherwise`` or nothing."""
    def pairs(record: ImageRecord, key: str) -> Pairs:
        if _refiner_stem(record) is None:
            return [] if otherwise is None else [(key, otherwise)]
        return [(key, get(record))] + ([(hash_key, record.refiner_model_hash)] if hash_key else [])
    return pairs


def _size_text(separator: str | None) -> Callable[[ImageRecord, str], Pairs]:
    return _value(lambda record: str((record.width, record.height)) if separator is None
                  else f"{record.width}{separator}{record.height}")


def _directions_text(record: ImageRecord, key: str) -> Pairs:
    directions = record.task.outpaint
    return [(key, ", ".join(directions))] if directions else []


def _read_directions(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    if key not in values:
        return {}
    value = values[key]
    names = value if isinstance(value, list) else str(value).split(",")
    return {"outpaint": [str(name).strip().capitalize() for name in names if str(name).strip()]}


def _read_fooocus_loras(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    return {"loras": _fooocus_loras(values, source.lora_files)}


def _read_a1111_loras(values: Mapping[str, Any], key: str, source: _Source) -> dict[str, Any]:
    return {"loras": _a1111_loras(values.get(key, ""), source.lora_files)}


_EFFECTIVE_STEPS = Codec(write=_value(lambda record: record.task.effective_steps))
_ADM = Codec(write=_adm_pairs, read=_read_adm)
_FREEU = Codec(write=_freeu_pairs, read=_read_freeu)
_VAE = Codec(write=_value(_vae_label), read=_read_vae)

# Codecs the field table names (``Meta.codec``), per scheme.
FOOOCUS_CODECS: Mapping[str, Codec] = {
    "effective_steps": _EFFECTIVE_STEPS,
    "seed": Codec(write=_value(lambda record: str(record.seed))),
    "size": Codec(write=_size_text(None), read=_read_size),
    "styles": Codec(write=_styles_text, read=_read_styles),
    "adm": _ADM,
    "freeu": _FREEU,
    "model": Codec(write=_model_pairs("base_model", "base_model_hash"), read=_read_base_model),
    "refiner": Codec(write=_if_refiner(_refiner_stem, "refiner_model_hash", otherwise=NO_MODEL_LABEL),
                     read=_read_refiner),
    "vae": _VAE,
    "loras": Codec(write=_loras_fooocus, read=_read_fooocus_loras),
    "directions": Codec(write=_directions_text, read=_read_directions),
}
A1111_CODECS: Mapping[str, Codec] = {
    "effective_steps": _EFFECTIVE_STEPS,
    "seed": Codec(write=_value(lambda record: record.seed)),
    "size": Codec(write=_size_text("x"), read=_read_size),
    "raw_prompt": Codec(read=lambda values, key, source: {"prompt": values.get(key, source.positive)}),
    "raw_negative_prompt": Codec(read=lambda values, key, source: {"negative_prompt": values.get(key,
                                                                                                 source.negative)}),
    "styles": Codec(write=_styles_text, read=_read_a1111_styles),
    "sampler": Codec(write=_a1111_sampler_pairs, read=_read_a1111_sampler),
    "scheduler": Codec(read=_read_a1111_scheduler),
    "adm": _ADM,
    "freeu": _FREEU,
    "model": Codec(write=_model_pairs("Model", "Model hash"), read=_read_base_model),
    "refiner": Codec(write=_if_refiner(_refiner_stem, "Refiner hash"), read=_read_refiner),
    "refiner_switch": Codec(write=_if_refiner(lambda record: record.task.refiner_switch)),
    "vae": _VAE,
    "loras": Codec(write=_loras_a1111, read=_read_a1111_loras),
    "directions": Codec(write=_directions_text, read=_read_directions),
}
_CODECS: Mapping[str, Mapping[str, Codec]] = {"fooocus": FOOOCUS_CODECS, "a1111": A1111_CODECS}


def _scheme_fields(scheme: str, model: type[BaseModel]) -> list[tuple[Meta, list[FieldFacts]]]:
    """Each key of ``scheme`` once, in field order, with the fields written under it."""
    keys: dict[str, tuple[Meta, list[FieldFacts]]] = {}
    for facts in task_fields(model):
        meta = getattr(facts, scheme)
        if meta is not None:
            keys.setdefault(meta.key, (meta, []))[1].append(facts)
    return list(keys.values())


# --------------------------------------------------------------------------------------------------- writers


def _write_scheme(scheme: str, record: ImageRecord) -> Pairs:
    """The (key, value) pairs of every task field in ``scheme``, in field order."""
    pairs: Pairs = []
    for meta, fields in _scheme_fields(scheme, type(record.task)):
        codec = _CODECS[scheme].get(meta.codec) if meta.codec else None
        if codec is not None and codec.write is not None:
            pairs += codec.write(record, meta.key)
            continue
        value = getattr(record.task, fields[0].name)
        if not meta.omits(value, fields[0].default):
            pairs.append((meta.key, value))
    return pairs


def to_fooocus_json(record: ImageRecord) -> str:
    """The ``fooocus`` scheme payload: sorted-keys JSON of the logged parameters (§1.11) plus Foci's keys."""
    data: dict[str, Any] = dict(_write_scheme("fooocus", record))
    data.update({
        "prompt_expansion": record.prompt_expansion,
        "full_prompt": list(record.positive_items),
        "full_negative_prompt": list(record.negative_items),
        "metadata_scheme": "fooocus",
        "version": version_label(record.software),
        "software": record.software,
        "device": record.device,
    })
    return json.dumps(data, sort_keys=True)


def to_a1111_text(record: ImageRecord) -> str:
    """The ``a1111`` scheme payload: prompt, ``Negative prompt:`` line, one line of ``Key: value`` pairs."""
    params = [*_write_scheme("a1111", record), ("Version", version_label(record.software))]
    position = {key: index for index, key in enumerate(A1111_KEY_ORDER)}
    unlisted = position["Lora hashes"] - 0.5
    params.sort(key=lambda pair: position.get(pair[0], unlisted))
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in params)
    positive = ", ".join(record.positive_items)
    negative = ", ".join(record.negative_items)
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{positive}{negative_line}\n{line}".strip()


def _read_scheme(scheme: str, values: Mapping[str, Any], source: _Source, *, writer_omits: bool,
                 model: type[GenerationTask]) -> GenerationTask:
    """Task fields from a scheme's key values, validated into a task. ``writer_omits``: the record was written by a
    writer that leaves keys out (Fooocus, Foci, A1111), so a missing key means its ``absent`` value."""
    fields: dict[str, Any] = {"metadata_scheme": scheme, "save_metadata": True}
    key_names: dict[str, str] = {}
    for meta, facts_list in _scheme_fields(scheme, model):
        key = meta.key
        key_names.update((facts.name, key) for facts in facts_list)
        codec = _CODECS[scheme].get(meta.codec) if meta.codec else None
        if codec is not None and codec.read is not None:
            fields.update(codec.read(values, key, source))
        elif key in values:
            fields[facts_list[0].name] = _PLAIN_READERS.get(facts_list[0].type, _as_text)(key, values[key])
        elif writer_omits and meta.absent is not PydanticUndefined:
            fields[facts_list[0].name] = meta.absent
    try:
        return model(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        task_field = location[0] if location else "aspect_ratio"
        raise _fail(key_names.get(task_field, task_field), first.get("msg", str(error))) from None


def _as_bool(field: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise _fail(field, f"expected True or False, got {value!r}")


_PLAIN_READERS: Mapping[type | None, Callable[[str, object], Any]] = {
    int: _as_int, float: _as_float, str: _as_text, bool: _as_bool}


def task_from_metadata(
    payload: str | dict[str, Any],
    scheme: str | None = None,
    *,
    model_files: Iterable[str] = (),
    lora_files: Iterable[str] = (),
    vae_files: Iterable[str] = (),
    style_library: StyleLibrary | None = None,
    model: type[GenerationTask] = GenerationTask,
) -> GenerationTask:
    """Rebuild a task from either scheme's payload (the inverse of both writers).

    ``scheme`` None picks ``fooocus`` for a dict (or a string holding a JSON object), ``a1111`` for other
    text. Metadata stores model stems; a file in ``model_files`` / ``lora_files`` / ``vae_files`` with the
    same stem replaces the stem. Unknown keys are ignored. Malformed input raises :class:`MetadataError` (a
    ``ValueError``) naming the field. Settings metadata does not carry (image number, output format, developer
    overwrites other than the refiner switch) keep their defaults; steps and size are the effective ones.

    a1111 text without a ``Styles`` key (files written by Fooocus or AUTOMATIC1111) gets its styles un-wrapped
    from the prompt texts with :func:`extract_styles_from_prompt`, against ``style_library`` (default: the
    shipped styles); no style found means no style selected. ``model`` is the task class whose field table is
    read (a subclass with more fields reads their keys too).
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
        return _read_scheme("fooocus", data, _Source(list(model_files), list(lora_files), list(vae_files)),
                            writer_omits="version" in data, model=model)
    if not isinstance(data, str):
        raise MetadataError(f"a1111 metadata must be text, got {type(data).__name__}")
    positive, negative, params = _split_a1111(data)
    source = _Source(list(model_files), list(lora_files), list(vae_files), style_library, positive, negative)
    return _read_scheme("a1111", params, source, writer_omits=True, model=model)
