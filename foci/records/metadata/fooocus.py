"""The ``fooocus`` metadata scheme (§1.11): a sorted-keys JSON object of the logged parameters.

Foci extensions to Fooocus's layout (ignored by Fooocus's reader): ``software``, ``device``, ``precision``;
``sag_scale`` / ``perp_neg_scale`` when non-zero.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from foci.records.metadata.table import (
    ADM,
    DIRECTIONS,
    EFFECTIVE_STEPS,
    FREEU,
    VAE,
    Codec,
    Pairs,
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
    NO_MODEL_LABEL,
    ImageRecord,
    as_float,
    as_text,
    fail,
    refiner_stem,
    resolve,
    stem,
    version_label,
    without_performance_lora,
)
from foci.task import GenerationTask, LoraSpec


def _fooocus_loras(data: Mapping[str, Any], lora_files: list[str]) -> list[LoraSpec]:
    """LoRAs from ``loras`` ([stem, weight, hash] rows), else from the ``lora_combined_N`` strings (the file names
    in log.html's JSON); without the performance mode's own LoRA, which Fooocus lists too."""
    pairs: list[tuple[str, float]] = []
    if "loras" in data:
        rows = data["loras"]
        if not isinstance(rows, list):
            raise fail("loras", f"expected a list of [name, weight, hash], got {rows!r}")
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 2 or not isinstance(row[0], str):
                raise fail("loras", f"expected [name, weight, hash], got {row!r}")
            pairs.append((row[0], as_float("loras", row[1])))
    else:
        combined = sorted(
            (key for key in data if re.fullmatch(r"lora_combined_\d+", key)),
            key=lambda key: int(key.rsplit("_", 1)[1]),
        )
        for key in combined:
            name, separator, weight = as_text(key, data[key]).rpartition(" : ")
            if not separator:
                raise fail(key, f"expected 'name : weight', got {data[key]!r}")
            pairs.append((name, as_float(key, weight)))
    pairs = without_performance_lora(pairs, data.get("performance"))
    return [LoraSpec(name=resolve(name, lora_files), weight=weight) for name, weight in pairs if name]


def _loras_pairs(record: ImageRecord, key: str) -> Pairs:
    rows = [[stem(name), weight, lora_hash] for name, weight, lora_hash in record.loras]
    combined = [(f"lora_combined_{index}", f"{stem(name)} : {weight}")
                for index, (name, weight, _) in enumerate(record.loras, start=1)]
    return [(key, rows), *combined]


def _read_loras(values: Mapping[str, Any], key: str, source: Source) -> dict[str, Any]:
    return {"loras": _fooocus_loras(values, source.lora_files)}


# Codecs the field table names (``Meta.codec``) for this scheme.
FOOOCUS_CODECS: Mapping[str, Codec] = {
    "effective_steps": EFFECTIVE_STEPS,
    "seed": Codec(write=value(lambda record: str(record.seed))),
    "size": Codec(write=size_text(None), read=read_size),
    "styles": Codec(write=styles_text, read=read_styles),
    "adm": ADM,
    "freeu": FREEU,
    "model": Codec(write=model_pairs("base_model_hash"), read=read_base_model),
    "refiner": Codec(write=if_refiner(refiner_stem, "refiner_model_hash", otherwise=NO_MODEL_LABEL),
                     read=read_refiner),
    "vae": VAE,
    "loras": Codec(write=_loras_pairs, read=_read_loras),
    "directions": DIRECTIONS,
}


def to_fooocus_json(record: ImageRecord) -> str:
    """The ``fooocus`` scheme payload: sorted-keys JSON of the logged parameters (§1.11) plus Foci's keys."""
    data: dict[str, Any] = dict(write_scheme("fooocus", FOOOCUS_CODECS, record))
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


def read_fooocus(data: Mapping[str, Any], source: Source, model: type[GenerationTask]) -> GenerationTask:
    """A task from a ``fooocus`` scheme object (written by Fooocus or Foci)."""
    return read_scheme("fooocus", FOOOCUS_CODECS, data, source, writer_omits="version" in data, model=model)
