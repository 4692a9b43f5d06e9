"""The Gradio controls ↔ :class:`~foci.task.GenerationTask` (pure functions, no Gradio): control values into a
task and back, the performance lock of the restricted controls, and the progress line's HTML."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import ValidationError

from foci.fields import FieldFacts, task_fields
from foci.messages import validation_message
from foci.records.metadata import DEFAULT_VAE_LABEL, NO_MODEL_LABEL
from foci.settings.performance import PERFORMANCE_MODES, Performance, PerformanceError
from foci.task import MAX_SEED, GenerationTask

# Controls a restricted performance locks (Fooocus's eleven), in the order of the performance handler's updates.
RESTRICTED_CONTROLS: tuple[str, ...] = (
    "guidance_scale", "sharpness", "adm_scaler_end", "adm_scaler_positive", "adm_scaler_negative", "refiner_switch",
    "refiner_model", "sampler", "scheduler", "adaptive_cfg", "refiner_swap_method",
)



class UIError(ValueError):
    """A control value that cannot become a task; the message is shown to the user."""


def parse_seed(text: object) -> int:
    """A seed typed into the seed box (whitespace allowed); :class:`UIError` when it is not a valid seed."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UIError(f"seed must be a whole number between 0 and {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise UIError(f"seed must be between 0 and {MAX_SEED}, got {value}")
    return value


# ------------------------------------------------------------------------------------------ controls ↔ task
def _int(value: object, name: str) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UIError(f"{name} must be a number, got {value!r}") from None
    if not number.is_integer():
        raise UIError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _mode_steps(performance: str) -> int | None:
    try:
        return PERFORMANCE_MODES[Performance.parse(performance)].steps
    except PerformanceError:
        return None


def _lora_rows(values: Mapping[str, Any], lora_rows: int) -> list[dict[str, Any]]:
    loras = []
    for row in range(lora_rows):
        name = values.get(f"lora_name_{row}")
        if name and name != NO_MODEL_LABEL:
            loras.append({"name": str(name), "weight": values.get(f"lora_weight_{row}", 1.0),
                          "enabled": bool(values.get(f"lora_enabled_{row}", True))})
    return loras


def _lora_controls(task: GenerationTask, lora_rows: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for row in range(lora_rows):
        lora = task.loras[row] if row < len(task.loras) else None
        values[f"lora_enabled_{row}"] = lora.enabled if lora else True
        values[f"lora_name_{row}"] = lora.name if lora else NO_MODEL_LABEL
        values[f"lora_weight_{row}"] = lora.weight if lora else 1.0
    return values


_FREEU_CONTROLS = ("b1", "b2", "s1", "s2")


def _overwrite_step_control(task: GenerationTask) -> int:
    """The UI has no step control (the performance mode decides, as in Fooocus): explicitly chosen steps that
    differ from the mode's count appear as the developer "forced sampling steps" value."""
    if task.overwrite_step <= 0 and "steps" in task.model_fields_set and task.steps != _mode_steps(task.performance):
        return task.steps
    return task.overwrite_step


def _name_or_none(value: Any, empty_label: str) -> Any:
    """A model dropdown's value as a field value: None for nothing chosen or the "none" label."""
    return None if not value or value == empty_label else value


@dataclass(frozen=True)
class UIConverter:
    """Between a field and its control(s), for a field the table gives ``Control(convert=...)``.

    ``to_task(values, facts, lora_rows)`` reads the control values (keyed by control name) into the field value;
    ``to_controls(task, facts, lora_rows)`` gives the control values showing the field.
    """

    to_task: Callable[[Mapping[str, Any], FieldFacts, int], Any]
    to_controls: Callable[[GenerationTask, FieldFacts, int], dict[str, Any]]


def _plain(get: Callable[[GenerationTask, FieldFacts], Any]) -> Callable[[GenerationTask, FieldFacts, int], dict]:
    return lambda task, facts, rows: {facts.name: get(task, facts)}


# Converters the field table names (``Control.convert``).
UI_CONVERTERS: Mapping[str, UIConverter] = {
    "seed": UIConverter(lambda values, facts, rows: parse_seed(values.get("seed")),
                        _plain(lambda task, facts: str(task.seed))),
    "list": UIConverter(lambda values, facts, rows: list(values.get(facts.name) or []),
                        _plain(lambda task, facts: list(getattr(task, facts.name)))),
    "text": UIConverter(lambda values, facts, rows: values.get(facts.name) or "",
                        _plain(lambda task, facts: getattr(task, facts.name))),
    "no_model": UIConverter(lambda values, facts, rows: _name_or_none(values.get(facts.name), NO_MODEL_LABEL),
                            _plain(lambda task, facts: getattr(task, facts.name) or NO_MODEL_LABEL)),
    "vae": UIConverter(lambda values, facts, rows: _name_or_none(values.get(facts.name), DEFAULT_VAE_LABEL),
                       _plain(lambda task, facts: getattr(task, facts.name) or DEFAULT_VAE_LABEL)),
    "loras": UIConverter(lambda values, facts, rows: _lora_rows(values, rows),
                         lambda task, facts, rows: _lora_controls(task, rows)),
    "freeu": UIConverter(
        lambda values, facts, rows: {"enabled": bool(values.get("freeu_enabled")),
                                     **{name: values.get(f"freeu_{name}") for name in _FREEU_CONTROLS}},
        lambda task, facts, rows: {"freeu_enabled": task.freeu.enabled,
                                   **{f"freeu_{name}": getattr(task.freeu, name) for name in _FREEU_CONTROLS}}),
    "overwrite_step": UIConverter(lambda values, facts, rows: _plain_value(values, facts),
                                  _plain(lambda task, facts: _overwrite_step_control(task))),
}


def _plain_value(values: Mapping[str, Any], facts: FieldFacts) -> Any:
    """A control value as the field's value: text boxes give text, whole-number controls whole numbers."""
    value = values.get(facts.name)
    ui = facts.ui
    if ui is not None and ui.kind == "checkbox":
        return bool(value)
    if ui is not None and ui.kind == "textbox":
        return value or ""
    if facts.type is int:
        return _int(value, ui.name or ui.label if ui is not None else facts.name)
    return value


def task_from_values(values: Mapping[str, Any], *, lora_rows: int, seed: int | None = None,
                     extra: Mapping[str, Any] | None = None) -> GenerationTask:
    """Build the task a Generate click describes from control values keyed by control name (one per field of the
    field table with a UI control).

    ``seed`` replaces the seed box (used when "Random" is ticked); ``extra`` are further task fields (the Input
    Image panel's, see :func:`foci.apps.ui_input_image.input_image_fields`). Raises :class:`UIError` with a
    readable message for any invalid value; nothing is queued then.
    """
    fields: dict[str, Any] = {}
    for facts in task_fields():
        if facts.ui is None:
            continue
        if facts.name == "seed" and seed is not None:
            fields["seed"] = seed
        elif facts.ui.convert is not None:
            fields[facts.name] = UI_CONVERTERS[facts.ui.convert].to_task(values, facts, lora_rows)
        else:
            fields[facts.name] = _plain_value(values, facts)
    if not fields["base_model"]:
        raise UIError("choose a base model in the Models tab")
    fields.update(extra or {})
    try:
        return GenerationTask(**fields)
    except ValidationError as error:
        raise UIError(validation_message(error)) from None


def values_from_task(task: GenerationTask, *, lora_rows: int) -> dict[str, Any]:
    """Control values (keyed by control name) showing ``task``; the inverse of :func:`task_from_values`."""
    values: dict[str, Any] = {}
    for facts in task_fields(type(task)):
        if facts.ui is None:
            continue
        if facts.ui.convert is not None:
            values.update(UI_CONVERTERS[facts.ui.convert].to_controls(task, facts, lora_rows))
        else:
            values[facts.name] = getattr(task, facts.name)
    return values


# ------------------------------------------------------------------------------------------ performance lock
def forced_control_values(performance: str) -> dict[str, Any] | None:
    """The control values a restricted performance forces, keyed by control name (a subset of
    :data:`RESTRICTED_CONTROLS`; "no refiner" is the ``None`` label); ``None`` for Quality, Speed or an unknown name."""
    try:
        mode = Performance.parse(performance)
    except PerformanceError:
        return None
    if not mode.is_restricted:
        return None
    overrides = PERFORMANCE_MODES[mode].overrides
    return {name: NO_MODEL_LABEL if name == "refiner_model" and overrides[name] is None else overrides[name]
            for name in RESTRICTED_CONTROLS if name in overrides}


@dataclass(frozen=True)
class PerformanceLock:
    """What the :data:`RESTRICTED_CONTROLS` show after a performance change."""

    values: dict[str, Any]
    """The value each restricted control shows."""
    locked: bool
    """True in a restricted mode: the controls are not interactive and the negative prompt is hidden."""
    saved: dict[str, Any] | None
    """The user's own values, to bring back when an unrestricted mode is chosen again (None when unlocked)."""


def performance_lock(performance: str, current: Mapping[str, Any],
                     saved: Mapping[str, Any] | None = None) -> PerformanceLock:
    """Lock or unlock the restricted controls for ``performance``.

    ``current`` holds the controls' present values, ``saved`` the values kept when a restricted mode was chosen
    (None while unlocked). Entering a restricted mode keeps ``current`` and shows the forced values (a control the
    mode does not force, the refiner swap method, keeps its value); moving between restricted modes keeps the
    first saved values; leaving them shows the saved values again.
    """
    own = {name: saved.get(name, current[name]) if saved is not None else current[name]
           for name in RESTRICTED_CONTROLS}
    forced = forced_control_values(performance)
    if forced is None:
        return PerformanceLock(own, False, None)
    return PerformanceLock({name: forced.get(name, current[name]) for name in RESTRICTED_CONTROLS}, True, own)


# ------------------------------------------------------------------------------------------ progress display
def progress_html(percent: float, text: str, *, state: str = "running") -> str:
    """The progress bar and its line of text."""
    width = max(0.0, min(100.0, float(percent)))
    return (f'<div class="foci-progress foci-{html.escape(state)}">'
            f'<div class="foci-bar"><span style="width:{width:.1f}%"></span></div>'
            f'<div class="foci-progress-text">{html.escape(text)}</div></div>')


def _eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    return f" — about {int(seconds + 0.5)} s left" if seconds < 90 else f" — about {seconds / 60:.1f} min left"


def _decode_preview(data: str | None) -> Image.Image | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            return image.convert("RGB")
    except (ValueError, OSError):
        return None
