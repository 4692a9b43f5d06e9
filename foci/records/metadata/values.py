"""What both metadata schemes share: the image record, the error type, model-name conventions and the readers that
turn a stored value (JSON value or text) into a task field value with one clear error."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict

from foci.settings.performance import PERFORMANCE_MODES, Performance, PerformanceError
from foci.task import GenerationTask

METADATA_SCHEMES: tuple[str, ...] = ("fooocus", "a1111")
DEFAULT_VAE_LABEL = "Default (model)"
NO_MODEL_LABEL = "None"


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
    logged_prompt: str | None = None
    """The positive text as Fooocus logs it: after wildcards and arrays, without ``<lora:>`` tags, extra lines
    joined by newlines (None: the task's prompt)."""
    logged_negative_prompt: str | None = None
    """The negative text after wildcards, as Fooocus logs it (None: the task's negative prompt)."""
    base_model_name: str
    base_model_hash: str = ""
    refiner_model_name: str | None = None
    refiner_model_hash: str = ""
    vae_name: str | None = None
    loras: list[tuple[str, float, str]] = []
    software: str
    device: str


def stem(name: str) -> str:
    """File stem of a model name or path, as Fooocus stores it."""
    return PurePath(name.replace("\\", "/")).stem


def version_label(software: str) -> str:
    """``"Foci 0.1.0"`` → ``"Foci v0.1.0"`` (Fooocus's ``version`` style); other strings unchanged."""
    name, _, number = software.rpartition(" ")
    if name and number[:1].isdigit():
        return f"{name} v{number}"
    return software


def refiner_stem(record: ImageRecord) -> str | None:
    """The refiner's stem, or None when the image had no refiner."""
    name = record.refiner_model_name
    if not name or name == NO_MODEL_LABEL:
        return None
    return stem(name)


def vae_label(record: ImageRecord) -> str:
    """The VAE as Fooocus writes it: the file stem, or ``Default (model)`` for the checkpoint's own VAE."""
    return stem(record.vae_name) if record.vae_name else DEFAULT_VAE_LABEL


# --------------------------------------------------------------------------------------------------- readers


def fail(field: str, message: str) -> MetadataError:
    """The error for a bad value of metadata key ``field``."""
    return MetadataError(f"metadata field {field!r}: {message}")


def as_text(field: str, value: object) -> str:
    """Text (None reads as empty)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise fail(field, f"expected text, got {type(value).__name__}")
    return value


def as_int(field: str, value: object) -> int:
    """An integer, or its text."""
    if isinstance(value, bool):
        raise fail(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise fail(field, f"expected an integer, got {value!r}")


def as_float(field: str, value: object) -> float:
    """A number, or its text."""
    if isinstance(value, bool):
        raise fail(field, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise fail(field, f"expected a number, got {value!r}")


def as_bool(field: str, value: object) -> bool:
    """A boolean, or its text ``True`` / ``False`` (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise fail(field, f"expected True or False, got {value!r}")


def as_numbers(field: str, value: object, count: int) -> list[float]:
    """``"(1.5, 0.8, 0.3)"`` or a list of ``count`` numbers."""
    if isinstance(value, str):
        parts = value.strip().strip("()[]").split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise fail(field, f"expected {count} numbers, got {value!r}")
    if len(parts) != count:
        raise fail(field, f"expected {count} numbers, got {value!r}")
    return [as_float(field, part.strip() if isinstance(part, str) else part) for part in parts]


def as_text_list(field: str, value: object) -> list[str]:
    """A list of strings, or its Python/JSON literal such as ``"['Fooocus V2', 'Fooocus Sharp']"``."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip()) if value.strip() else []
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise fail(field, f"expected a list of names, got {value!r}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise fail(field, f"expected a list of names, got {value!r}")


def as_size(field: str, value: object, separator: str) -> str:
    """``"(1152, 896)"`` / ``[1152, 896]`` / ``"1152x896"`` → ``"1152*896"``."""
    if isinstance(value, str) and separator in value:
        parts: list[object] = list(value.split(separator))
    elif isinstance(value, str):
        parts = list(value.strip().strip("()[]").split(","))
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise fail(field, f"expected a width and height, got {value!r}")
    if len(parts) != 2:
        raise fail(field, f"expected a width and height, got {value!r}")
    width, height = (as_int(field, part.strip() if isinstance(part, str) else part) for part in parts)
    return f"{width}*{height}"


def resolve(name: str, candidates: Iterable[str]) -> str:
    """Map a stored stem back to an available file name (same stem), else keep it as stored."""
    options = list(candidates)
    if name in options:
        return name
    for option in options:
        if stem(option) == name:
            return option
    return name


def optional_model(field: str, value: object, candidates: Iterable[str], none_labels: tuple[str, ...]) -> str | None:
    """A model name that may be absent (``None`` / ``Default (model)``), resolved against ``candidates``."""
    text = as_text(field, value).strip()
    if not text or text in none_labels:
        return None
    return resolve(text, candidates)


def without_performance_lora(loras: list[tuple[str, float]], performance: object) -> list[tuple[str, float]]:
    """``loras`` without the LoRA of the recorded ``performance`` mode (Fooocus writes it after the user's LoRAs;
    the mode adds it again, so it is not a user LoRA). Matched by file stem, whatever the weight, as Fooocus's
    reader does; an unknown or missing mode drops nothing."""
    try:
        mode = PERFORMANCE_MODES[Performance.parse(performance)] if isinstance(performance, str) else None
    except PerformanceError:
        mode = None
    if mode is None or mode.lora is None:
        return loras
    speed_lora = stem(mode.lora[0])
    return [(name, weight) for name, weight in loras if stem(name) != speed_lora]
