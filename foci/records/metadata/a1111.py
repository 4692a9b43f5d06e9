"""The ``a1111`` metadata scheme (§1.11): the prompt, a ``Negative prompt:`` line, and one line of ``Key: value``
pairs in the order of :data:`A1111_KEY_ORDER` (a key it does not list goes before the LoRAs). The reader also
takes text written by Fooocus and by AUTOMATIC1111.

Foci extensions to Fooocus's layout (all ignored by Fooocus's reader): ``Styles`` (a Python list literal, so
styles need not be guessed back from the prompt; without it, as in files written by Fooocus or AUTOMATIC1111,
:func:`extract_styles_from_prompt` recovers them), ``Refiner switch at`` (A1111's own key) when a refiner is set,
``Foci sampler`` when the A1111 sampler name is shared by two Foci samplers (e.g. ``dpmpp_2m_sde`` and
``dpmpp_2m_sde_gpu``), ``Foci prompt`` / ``Foci negative prompt`` (the prompt as typed, when it differs from
``Raw prompt``, which holds it as Fooocus logs it: wildcards and arrays resolved, ``<lora:>`` tags removed),
``Precision`` when not ``auto``, ``SAG scale`` / ``Perp-Neg scale`` when non-zero. Values that start with ``"`` are
quoted as well, so a quoted prompt survives the round trip. Fooocus's reader has no key for the refiner switch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from foci.records.metadata.table import (
    ADM,
    DIRECTIONS,
    EFFECTIVE_STEPS,
    FREEU,
    VAE,
    Codec,
    Pairs,
    Reader,
    Source,
    if_refiner,
    model_pairs,
    read_base_model,
    read_refiner,
    read_scheme,
    read_size,
    read_styles,
    size_text,
    styles_text,
    value,
    write_scheme,
)
from foci.records.metadata.values import (
    ImageRecord,
    MetadataError,
    as_float,
    fail,
    refiner_stem,
    resolve,
    stem,
    version_label,
    without_performance_lora,
)
from foci.records.style_recovery import extract_styles_from_prompt
from foci.task import SAMPLERS, GenerationTask, LoraSpec
from foci.text.styles import StyleLibrary

# Foci sampler → the A1111 name Fooocus writes (and its reader maps back); None where Fooocus has none: the Foci
# name is written then, which Fooocus reads as is (so DPM++ 3M SDE is written as dpmpp_3m_sde, as Fooocus does).
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
    "dpmpp_3m_sde": None,
    "dpmpp_3m_sde_gpu": None,
    "ddpm": None,
    "lcm": "LCM",
    "tcd": "TCD",
    "restart": "Restart",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": None,
}
# A1111 name → Foci sampler. Where two share a name the ``_gpu`` variant (Fooocus's default) wins. Also read:
# AUTOMATIC1111's names Fooocus does not write (and earlier Foci versions wrote).
_SAMPLER_FROM_A1111: dict[str, str] = {"DPM++ 3M SDE": "dpmpp_3m_sde_gpu"}
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
    "Model hash", "Performance", "Scheduler", "VAE", "Raw prompt", "Raw negative prompt", "Foci prompt",
    "Foci negative prompt", "Styles", "Refiner",
    "Refiner hash", "Refiner switch at", "Adaptive CFG", "Clip skip", "Overwrite Switch", "Refiner Swap Method",
    "FreeU", "SAG scale", "Perp-Neg scale", "Precision", "Lora hashes", "Lora weights", "Version",
)


def _quote(text_value: object) -> str:
    """A1111 quoting: JSON-quote a value containing ``,`` ``:`` or a newline (or starting with a quote)."""
    text = str(text_value)
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


# --------------------------------------------------------------------------------------------------- parsing

_PARAM = re.compile(r'\s*(\w[\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(line: str) -> dict[str, str]:
    """``"Steps: 30, Sampler: Euler a, Raw prompt: \\"a, b\\""`` → {key: unquoted value}."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(line):
        key, text = match.group(1).strip(), match.group(2).strip()
        if text.startswith('"') and len(text) >= 2 and text.endswith('"'):
            try:
                text = json.loads(text)
            except json.JSONDecodeError:
                raise fail(key, f"badly quoted value {text!r}") from None
        params[key] = text
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


# ---------------------------------------------------------------------------------------------------- codecs


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
    raise fail("Sampler", f"unknown sampler {label!r}")


def _sampler_pairs(record: ImageRecord, key: str) -> Pairs:
    task = record.task
    pairs: Pairs = [(key, a1111_sampler_label(task.sampler, task.scheduler))]
    a1111_name = A1111_SAMPLER_NAMES.get(task.sampler)
    if a1111_name is not None and _SAMPLER_FROM_A1111[a1111_name] != task.sampler:
        pairs.append(("Foci sampler", task.sampler))
    return pairs


def _read_sampler(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    sampler, _ = _a1111_sampler(values)
    return {} if sampler is None else {"sampler": sampler}


def _read_scheduler(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``Scheduler`` (Foci), else A1111's ``Schedule type``, else karras when the sampler label said so."""
    if key in values:
        return {"scheduler": values[key]}
    if "Schedule type" in values:
        if values["Schedule type"] not in _A1111_SCHEDULE_TYPES:
            raise fail("Schedule type", f"unknown schedule {values['Schedule type']!r}")
        return {"scheduler": _A1111_SCHEDULE_TYPES[values["Schedule type"]]}
    return {"scheduler": "karras"} if _a1111_sampler(values)[1] else {}


def _raw_prompt(logged: Callable[[ImageRecord], str | None], typed: Callable[[ImageRecord], str],
                foci_key: str) -> Callable[[ImageRecord, str], Pairs]:
    """A writer of the prompt as Fooocus logs it (after wildcards and arrays, without ``<lora:>`` tags: Fooocus's
    reader takes it as the prompt and infers Fooocus V2 when the written items differ from it) and, under
    ``foci_key``, the prompt as typed when that differs (Foci restores it, so wildcards draw the same again)."""
    def pairs(record: ImageRecord, key: str) -> Pairs:
        text = typed(record)
        shown = logged(record)
        if shown is None or shown == text:
            return [(key, text)]
        return [(key, shown), (foci_key, text)]
    return pairs


def _read_raw_prompt(field: str, foci_key: str, fallback: Callable[[Source], str]) -> Reader:
    def read(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
        return {field: values.get(foci_key, values.get(key, fallback(source)))}
    return read


def _read_styles_or_recover(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``Styles`` when written (by Foci); else, as in files of Fooocus or AUTOMATIC1111, the styles un-wrapped
    from the prompt texts, which also gives the real prompts."""
    if key in values:
        return read_styles(values, key, source)
    library = source.style_library if source.style_library is not None else StyleLibrary.load()
    styles, prompt, negative = extract_styles_from_prompt(
        source.positive, source.negative, library, raw_prompt=values.get("Raw prompt"),
        expansion=values.get("Prompt expansion"))
    return {"styles": styles, "prompt": values.get("Raw prompt", prompt),
            "negative_prompt": values.get("Raw negative prompt", negative)}


def _loras_pairs(record: ImageRecord, key: str) -> Pairs:
    if not record.loras:
        return []
    return [("Lora hashes", ", ".join(f"{stem(n)}: {h}" for n, _, h in record.loras)),
            (key, ", ".join(f"{stem(n)}: {w}" for n, w, _ in record.loras))]


def _a1111_loras(weights: str) -> list[tuple[str, float]]:
    """``"offset: 0.35, detail: -0.5"`` → [(stem, weight)]."""
    loras: list[tuple[str, float]] = []
    for entry in filter(None, (part.strip() for part in weights.split(", "))):
        name, separator, weight = entry.rpartition(":")
        if not separator or not name.strip():
            raise fail("Lora weights", f"expected 'name: weight', got {entry!r}")
        loras.append((name.strip(), as_float("Lora weights", weight)))
    return loras


def _read_loras(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """The LoRAs of ``Lora weights`` without the performance mode's own (Fooocus lists it too)."""
    loras = without_performance_lora(_a1111_loras(values.get(key, "")), values.get("Performance"))
    return {"loras": [LoraSpec(name=resolve(name, source.lora_files), weight=weight) for name, weight in loras]}


# Codecs the field table names (``Meta.codec``) for this scheme.
A1111_CODECS: Mapping[str, Codec] = {
    "effective_steps": EFFECTIVE_STEPS,
    "seed": Codec(write=value(lambda record: record.seed)),
    "size": Codec(write=size_text("x"), read=read_size),
    "raw_prompt": Codec(write=_raw_prompt(lambda record: record.logged_prompt, lambda record: record.task.prompt,
                                          "Foci prompt"),
                        read=_read_raw_prompt("prompt", "Foci prompt", lambda source: source.positive)),
    "raw_negative_prompt": Codec(write=_raw_prompt(lambda record: record.logged_negative_prompt,
                                                   lambda record: record.task.negative_prompt, "Foci negative prompt"),
                                 read=_read_raw_prompt("negative_prompt", "Foci negative prompt",
                                                       lambda source: source.negative)),
    "styles": Codec(write=styles_text, read=_read_styles_or_recover),
    "sampler": Codec(write=_sampler_pairs, read=_read_sampler),
    "scheduler": Codec(read=_read_scheduler),
    "adm": ADM,
    "freeu": FREEU,
    "model": Codec(write=model_pairs("Model hash"), read=read_base_model),
    "refiner": Codec(write=if_refiner(refiner_stem, "Refiner hash"), read=read_refiner),
    "refiner_switch": Codec(write=if_refiner(lambda record: record.task.refiner_switch)),
    "vae": VAE,
    "loras": Codec(write=_loras_pairs, read=_read_loras),
    "directions": DIRECTIONS,
}


def to_a1111_text(record: ImageRecord) -> str:
    """The ``a1111`` scheme payload: prompt, ``Negative prompt:`` line, one line of ``Key: value`` pairs."""
    params = [*write_scheme("a1111", A1111_CODECS, record), ("Version", version_label(record.software))]
    position = {key: index for index, key in enumerate(A1111_KEY_ORDER)}
    unlisted = position["Lora hashes"] - 0.5
    params.sort(key=lambda pair: position.get(pair[0], unlisted))
    line = ", ".join(f"{key}: {_quote(text)}" for key, text in params)
    positive = ", ".join(record.positive_items)
    negative = ", ".join(record.negative_items)
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{positive}{negative_line}\n{line}".strip()


def read_a1111(text: str, source: Source, model: type[GenerationTask]) -> GenerationTask:
    """A task from ``a1111`` scheme text (written by Foci, Fooocus or AUTOMATIC1111)."""
    positive, negative, params = _split_a1111(text)
    full_source = Source(source.model_files, source.lora_files, source.vae_files, source.style_library,
                         positive, negative)
    return read_scheme("a1111", A1111_CODECS, params, full_source, writer_omits=True, model=model)
