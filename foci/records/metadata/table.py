"""The field-table loop shared by both schemes: each task field names its key in each scheme and, for a value that
is not written as the plain field value, a :class:`Codec`. Codecs used the same way by both schemes live here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from foci.fields import FieldFacts, Meta, task_fields
from foci.records.metadata.values import (
    DEFAULT_VAE_LABEL,
    NO_MODEL_LABEL,
    ImageRecord,
    as_bool,
    as_float,
    as_int,
    as_numbers,
    as_size,
    as_text,
    as_text_list,
    fail,
    optional_model,
    refiner_stem,
    resolve,
    stem,
    vae_label,
)
from foci.task import GenerationTask
from foci.text.styles import StyleLibrary


@dataclass(frozen=True)
class Source:
    """What a reader knows besides the key values: the files present, the style library, the a1111 prompt texts."""

    model_files: list[str]
    lora_files: list[str]
    vae_files: list[str]
    style_library: StyleLibrary | None = None
    positive: str = ""
    negative: str = ""


Pairs = list[tuple[str, object]]
Reader = Callable[[Mapping[str, Any], str, Source], dict[str, Any]]


@dataclass(frozen=True)
class Codec:
    """How a field (or the fields sharing a key) is written and read when it is not one plain value.

    ``write(record, key)`` returns the (key, value) pairs to write (none: the key is left out); ``read(values,
    key, source)`` returns task fields. Either may be None: the plain value is written or read then.
    """

    write: Callable[[ImageRecord, str], Pairs] | None = None
    read: Reader | None = None


# ----------------------------------------------------------------------------------------- shared codecs


def _tuple_text(*values: float) -> str:
    return str(tuple(values))


def _adm_pairs(record: ImageRecord, key: str) -> Pairs:
    task = record.task
    return [(key, _tuple_text(task.adm_scaler_positive, task.adm_scaler_negative, task.adm_scaler_end))]


def _read_adm(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    if key not in values:
        return {}
    positive, negative, end = as_numbers(key, values[key], 3)
    return {"adm_scaler_positive": positive, "adm_scaler_negative": negative, "adm_scaler_end": end}


def _freeu_pairs(record: ImageRecord, key: str) -> Pairs:
    freeu = record.task.freeu
    return [(key, _tuple_text(freeu.b1, freeu.b2, freeu.s1, freeu.s2))] if freeu.enabled else []


def _read_freeu(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    if key not in values:
        return {}
    b1, b2, s1, s2 = as_numbers(key, values[key], 4)
    return {"freeu": {"enabled": True, "b1": b1, "b2": b2, "s1": s1, "s2": s2}}


def read_size(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``aspect_ratio`` from ``"(w, h)"`` or ``"WxH"``."""
    return {"aspect_ratio": as_size(key, values[key], "x")} if key in values else {}


def read_base_model(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``base_model``: the stored stem, resolved against the checkpoint files."""
    if key not in values:
        return {}
    return {"base_model": resolve(as_text(key, values[key]).strip(), source.model_files)}


def read_refiner(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``refiner_model``: None for ``None``, else the stem resolved against the checkpoint files."""
    if key not in values:
        return {}
    return {"refiner_model": optional_model(key, values[key], source.model_files, (NO_MODEL_LABEL,))}


def _read_vae(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    if key not in values:
        return {}
    return {"vae": optional_model(key, values[key], source.vae_files, (DEFAULT_VAE_LABEL, NO_MODEL_LABEL))}


def styles_text(record: ImageRecord, key: str) -> Pairs:
    """The styles as a Python list literal (Fooocus's ``str(list)``)."""
    return [(key, str(list(record.task.styles)))]


def read_styles(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    """``styles`` from a list or its Python/JSON literal."""
    return {"styles": as_text_list(key, values[key])} if key in values else {}


def model_pairs(hash_key: str) -> Callable[[ImageRecord, str], Pairs]:
    """A writer of the base model's stem and, under ``hash_key``, its short hash."""
    def pairs(record: ImageRecord, key: str) -> Pairs:
        return [(key, stem(record.base_model_name)), (hash_key, record.base_model_hash)]
    return pairs


def value(get: Callable[[ImageRecord], object]) -> Callable[[ImageRecord, str], Pairs]:
    """A writer of one value computed from the record."""
    return lambda record, key: [(key, get(record))]


def if_refiner(get: Callable[[ImageRecord], object], hash_key: str | None = None,
               otherwise: object = None) -> Callable[[ImageRecord, str], Pairs]:
    """A writer for refiner facts: the value (and the refiner hash) with a refiner, else ``otherwise`` or nothing."""
    def pairs(record: ImageRecord, key: str) -> Pairs:
        if refiner_stem(record) is None:
            return [] if otherwise is None else [(key, otherwise)]
        return [(key, get(record))] + ([(hash_key, record.refiner_model_hash)] if hash_key else [])
    return pairs


def size_text(separator: str | None) -> Callable[[ImageRecord, str], Pairs]:
    """A writer of the image size: ``"(w, h)"`` (``separator`` None) or ``"w<separator>h"``."""
    return value(lambda record: str((record.width, record.height)) if separator is None
                 else f"{record.width}{separator}{record.height}")


def _directions_text(record: ImageRecord, key: str) -> Pairs:
    directions = getattr(record.task, "outpaint", None)
    return [(key, ", ".join(directions))] if directions else []


def _read_directions(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    if key not in values:
        return {}
    names = values[key] if isinstance(values[key], list) else str(values[key]).split(",")
    return {"outpaint": [str(name).strip().capitalize() for name in names if str(name).strip()]}


EFFECTIVE_STEPS = Codec(write=value(lambda record: record.task.effective_steps))
ADM = Codec(write=_adm_pairs, read=_read_adm)
FREEU = Codec(write=_freeu_pairs, read=_read_freeu)
VAE = Codec(write=value(vae_label), read=_read_vae)
DIRECTIONS = Codec(write=_directions_text, read=_read_directions)


# --------------------------------------------------------------------------------------------- the loops


def scheme_fields(scheme: str, model: type[BaseModel]) -> list[tuple[Meta, list[FieldFacts]]]:
    """Each key of ``scheme`` once, in field order, with the fields written under it."""
    keys: dict[str, tuple[Meta, list[FieldFacts]]] = {}
    for facts in task_fields(model):
        meta = getattr(facts, scheme)
        if meta is not None:
            keys.setdefault(meta.key, (meta, []))[1].append(facts)
    return list(keys.values())


def write_scheme(scheme: str, codecs: Mapping[str, Codec], record: ImageRecord) -> Pairs:
    """The (key, value) pairs of every task field in ``scheme``, in field order."""
    pairs: Pairs = []
    for meta, fields in scheme_fields(scheme, type(record.task)):
        codec = codecs.get(meta.codec) if meta.codec else None
        if codec is not None and codec.write is not None:
            pairs += codec.write(record, meta.key)
            continue
        field_value = getattr(record.task, fields[0].name)
        if not meta.omits(field_value, fields[0].default):
            pairs.append((meta.key, field_value))
    return pairs


_PLAIN_READERS: Mapping[type | None, Callable[[str, object], Any]] = {
    int: as_int, float: as_float, str: as_text, bool: as_bool}


def read_scheme(scheme: str, codecs: Mapping[str, Codec], values: Mapping[str, Any], source: Source, *,
                writer_omits: bool, model: type[GenerationTask]) -> GenerationTask:
    """Task fields from a scheme's key values, validated into a task. ``writer_omits``: the record was written by a
    writer that leaves keys out (Fooocus, Foci, A1111), so a missing key means its ``absent`` value."""
    fields: dict[str, Any] = {"metadata_scheme": scheme, "save_metadata": True}
    key_names: dict[str, str] = {}
    for meta, facts_list in scheme_fields(scheme, model):
        key = meta.key
        key_names.update((facts.name, key) for facts in facts_list)
        codec = codecs.get(meta.codec) if meta.codec else None
        if codec is not None and codec.read is not None:
            fields.update(codec.read(values, key, source))
        elif key in values:
            fields[facts_list[0].name] = _PLAIN_READERS.get(facts_list[0].type, as_text)(key, values[key])
        elif writer_omits and meta.absent is not PydanticUndefined:
            fields[facts_list[0].name] = meta.absent
    try:
        return model(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        task_field = location[0] if location else "aspect_ratio"
        raise fail(key_names.get(task_field, task_field), first.get("msg", str(error))) from None
