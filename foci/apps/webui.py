"""The browser UI (Gradio): the Fooocus layout, driving the same job queue as the HTTP API.

``build_ui`` returns a :class:`FociBlocks` (a ``gr.Blocks``) whose :class:`FociUI` controller owns all state:
the controls, the per-browser-session running job and the "generate forever" flags. Generate builds one
:class:`~foci.task.GenerationTask` from the controls, submits it to the shared :class:`JobStore` and streams that
job's :class:`EventBus` events into the preview, progress bar and gallery. ``mount_ui`` serves it on a FastAPI app
together with a small ``/history`` page of recent jobs.

As in Fooocus, choosing a restricted performance (Extreme Speed, Lightning, Hyper-SD) locks the controls whose
values that mode forces (:data:`RESTRICTED_CONTROLS`), shows the forced values and hides the negative prompt;
choosing Quality or Speed again unlocks them and brings back the values they had (kept per browser session in a
``gr.State``).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from PIL import Image
from pydantic import ValidationError

from foci.apps.ui_input_image import (
    ADVANCED_FIELDS,
    EXAMPLE_INPAINT_PROMPTS,
    INPUT_TABS,
    InputImageUIError,
    input_image_fields,
    method_layout,
    panel_from_task,
)
from foci.engine.engine import Engine
from foci.fields import FieldFacts, field_facts, task_fields
from foci.files.input_images import MAX_INPUT_BYTES, check_image_bytes
from foci.messages import validation_message
from foci.records.image_input import ImageInputError
from foci.records.metadata import DEFAULT_VAE_LABEL, NO_MODEL_LABEL, task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.admission import AdmissionError, admit
from foci.service.events import EventBus, JobEvent, Subscription
from foci.service.jobs import Job, JobError, JobImage, JobState, JobStore
from foci.service.worker import Worker
from foci.settings.aspect_ratios import aspect_label
from foci.settings.config import FociSettings, available_presets, load_settings
from foci.settings.performance import PERFORMANCE_MODES, Performance, PerformanceError, performance_lora_names
from foci.task import (
    INPAINT_DEFAULT,
    INPAINT_ENGINES,
    INPAINT_METHODS,
    MAX_SEED,
    OUTPAINT_DIRECTIONS,
    UOV_METHODS,
    GenerationTask,
    random_seed,
)
from foci.text.styles import StyleLibrary

ASSETS_DIR = Path(__file__).with_name("ui_assets")
FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
POLL_SECONDS = 0.5
HISTORY_PATH = "/history"
PROMPT_PLACEHOLDER = "Describe the picture you want… (or paste image parameters as JSON)"


# Controls a restricted performance locks (Fooocus's eleven), in the order of the performance handler's updates.
RESTRICTED_CONTROLS: tuple[str, ...] = (
    "guidance_scale", "sharpness", "adm_scaler_end", "adm_scaler_positive", "adm_scaler_negative", "refiner_switch",
    "refiner_model", "sampler", "scheduler", "adaptive_cfg", "refiner_swap_method",
)


PANEL_RESTORED: tuple[str, ...] = (
    "input_image_enabled", "input_tabs", "input_tab", "uov_image", "uov_method", "inpaint_editor", "inpaint_method",
    "inpaint_prompt", "quick_list", "outpaint", "inpaint_advanced", "invert_mask", "mask_dilate", "inpaint_engine",
    "inpaint_strength", "inpaint_respective_field",
)
"""The Input Image panel's parts a restored task (pasted metadata, dropped image) updates, in output order."""


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


@dataclass
class _Session:
    """What one browser session is doing: its current job and whether "generate forever" is on."""

    key: str
    job_id: str | None = None
    forever: bool = False


class _Field:
    """Names the controls that map to task fields (component ↔ name) while the layout is being built."""

    def __init__(self) -> None:
        self.components: dict[str, gr.components.Component] = {}

    def __call__(self, name: str, component: gr.components.Component) -> gr.components.Component:
        self.components[name] = component
        return component


class FociBlocks(gr.Blocks):
    """``gr.Blocks`` that carries its :class:`FociUI` controller, so ``mount_ui`` can add the history page."""

    controller: FociUI


class FociUI:
    """Builds the Gradio layout and handles its events against a shared store, bus and worker."""

    def __init__(self, *, store: JobStore, bus: EventBus, worker: Worker | None, engine: Engine,
                 settings: FociSettings, output_dir: Path, defaults: Mapping[str, Any] | None = None,
                 root: Path | None = None, title: str = "Foci", preset: str | None = "default") -> None:
        self.store = store
        self.bus = bus
        self.worker = worker
        self.engine = engine
        self.settings = settings
        self.output_dir = Path(output_dir).resolve()
        self.root = Path.cwd() if root is None else Path(root)
        self.title = title
        self.preset = preset
        self.styles = StyleLibrary.load(list(engine.styles_dirs))
        self.lora_rows = settings.default_max_lora_number
        values = {**settings.task_defaults(), **dict(defaults or {})}
        try:
            self.default_task = GenerationTask(**values)
        except ValidationError as error:
            raise UIError(f"invalid UI defaults: {validation_message(error)}") from None
        self.random_by_default = "seed" not in (defaults or {})
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._fields = _Field()
        self._input: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------- file lists
    def _files(self, kind: str) -> list[str]:
        """Model files of ``kind`` (performance LoRAs hidden: the performance mode adds them)."""
        hidden = performance_lora_names() if kind == "loras" else frozenset()
        try:
            return [path.as_posix() for path in self.engine.folders.list_files(kind) if path.name not in hidden]
        except (OSError, ValueError):
            return []

    def make_task(self, values: Mapping[str, Any], *, random: bool,
                  inputs: Mapping[str, Any] | None = None) -> GenerationTask:
        """The task of a Generate click; :class:`UIError` for anything the queue would refuse. ``inputs`` are the
        Input Image panel's values (:data:`~foci.apps.ui_input_image.INPUT_CONTROLS`); its image and mask are put
        into the engine's input store."""
        try:  # the engine's store only when the panel is in use (an API-only engine need not have one)
            extra = input_image_fields(inputs, self.engine.inputs) if inputs and inputs.get(
                "input_image_enabled") else {}
        except InputImageUIError as error:
            raise UIError(str(error)) from None
        task = task_from_values(values, lora_rows=self.lora_rows, seed=random_seed() if random else None,
                                extra=extra)
        try:
            admit(task, styles=self.styles, max_image_number=self.settings.default_max_image_number)
        except AdmissionError as error:
            raise UIError(str(error)) from None
        return task

    def _model_choices(self, current: str | None = None) -> list[str]:
        files = self._files("checkpoints")
        return files + ([current] if current and current not in files else [])

    def _aspect_choices(self, current: str | None = None) -> list[tuple[str, str]]:
        ratios = list(self.settings.available_aspect_ratios)
        if current and current not in ratios:
            ratios.insert(0, current)
        return [(aspect_label(ratio), ratio) for ratio in ratios]

    def _style_choices(self, selected: list[str], search: str = "") -> list[str]:
        """Selected styles first, then those matching ``search`` (all when it is empty)."""
        wanted = search.strip().casefold()
        rest = [name for name in self.styles.names() if name not in selected and wanted in name.casefold()]
        return [*selected, *rest]

    # ---------------------------------------------------------------------------------------- sessions
    def _session(self, request: gr.Request | None) -> _Session:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            return self._sessions.setdefault(key, _Session(key))

    def _forget(self, session: _Session) -> None:
        """Drop a session's record once its Generate has ended (a later click makes a new one)."""
        with self._lock:
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]

    @property
    def control_names(self) -> list[str]:
        """Names of the task controls in layout order (the order of preset/metadata update lists)."""
        return list(self._fields.components)

    def running_job(self, request: gr.Request | None) -> str | None:
        """The job id the session's Generate is following, if any."""
        return self._session(request).job_id

    # ---------------------------------------------------------------------------------------- layout
    def build(self) -> FociBlocks:
        """Lay out every control and wire the events."""
        field = self._fields
        values = values_from_task(self.default_task, lora_rows=self.lora_rows)
        initial = self._load_lock(values)
        values.update(initial.values)
        settings = self.settings
        with FociBlocks(title=self.title, analytics_enabled=False) as blocks:
            blocks.controller = self
            saved = gr.State(initial.saved)
            with gr.Row(elem_id="foci-main"):
                with gr.Column(scale=2, elem_id="foci-left"):
                    preview = gr.Image(label="Preview", format="png", interactive=False, visible=False,
                                       height=320, elem_id="foci-preview")
                    progress = gr.HTML(progress_html(0, "Ready", state="idle"), elem_id="foci-progress")
                    gallery = gr.Gallery(label="Results", format="png", columns=2, height=560, object_fit="contain",
                                         elem_id="foci-gallery", interactive=False)
                    with gr.Row(elem_id="foci-prompt-row"):
                        prompt = field("prompt", gr.Textbox(values["prompt"], lines=3, show_label=False,
                                                            placeholder=PROMPT_PLACEHOLDER, scale=8,
                                                            elem_id="foci-prompt"))
                        with gr.Column(scale=1, min_width=120):
                            generate = gr.Button("Generate", variant="primary", elem_id="foci-generate")
                            load_parameters = gr.Button("Load Parameters", visible=False,
                                                        elem_id="foci-load-parameters")
                            with gr.Row():
                                stop = gr.Button("Stop", variant="stop", visible=False, elem_id="foci-stop",
                                                 min_width=50)
                                skip = gr.Button("Skip", visible=False, elem_id="foci-skip", min_width=50)
                    with gr.Row(elem_id="foci-checkboxes"):
                        input_enabled = gr.Checkbox(False, label="Input Image", elem_id="foci-input-image",
                                                    container=False)
                        advanced = gr.Checkbox(settings.default_advanced_checkbox, label="Advanced",
                                               elem_id="foci-advanced", container=False)
                        forever = gr.Checkbox(False, label="Generate forever", elem_id="foci-forever",
                                              container=False)
                    panel = self._input_panel(input_enabled)
                right = gr.Column(scale=1, visible=settings.default_advanced_checkbox, elem_id="foci-right")
                with right, gr.Tabs():
                    with gr.Tab("Settings", elem_id="foci-tab-settings"):
                        presets = available_presets(self.root)
                        preset = gr.Dropdown(presets, value=self.preset if self.preset in presets else None,
                                             label="Preset", elem_id="foci-preset")
                        field("performance", gr.Radio([mode.value for mode in Performance],
                                                      value=values["performance"], label="Performance",
                                                      elem_id="foci-performance"))
                        with gr.Accordion("Aspect Ratios", open=False):
                            field("aspect_ratio", gr.Radio(self._aspect_choices(values["aspect_ratio"]),
                                                           value=values["aspect_ratio"], show_label=False,
                                                           elem_id="foci-aspect"))
                        self._controls_at("settings", values, locked=initial.locked)
                        field("negative_prompt", gr.Textbox(values["negative_prompt"], lines=2,
                                                            label="Negative Prompt",
                                                            placeholder="What the picture should avoid",
                                                            visible=not initial.locked,
                                                            elem_id="foci-negative"))
                        random = gr.Checkbox(self.random_by_default, label="Random", elem_id="foci-random")
                        field("seed", gr.Textbox(values["seed"], label="Seed", max_lines=1,
                                                        visible=not self.random_by_default,
                                                        elem_id="foci-seed"))
                        gr.HTML(f'<a href="{HISTORY_PATH}" target="_blank" id="foci-history-link">'
                                'History of generated images</a>')
                        image_file = gr.File(label="Load parameters from an image", file_types=["image"],
                                             type="filepath", elem_id="foci-metadata-file")
                    with gr.Tab("Styles", elem_id="foci-tab-styles"):
                        style_search = gr.Textbox(label="Search styles", placeholder="Type to filter styles",
                                                  max_lines=1, elem_id="foci-style-search")
                        styles = field("styles", gr.CheckboxGroup(self._style_choices(values["styles"]),
                                                                  value=values["styles"], label="Styles",
                                                                  elem_id="foci-styles"))
                    with gr.Tab("Models", elem_id="foci-tab-models"):
                        base = field("base_model", gr.Dropdown(self._model_choices(values["base_model"]),
                                                               value=values["base_model"], label="Base Model",
                                                               allow_custom_value=True, elem_id="foci-base"))
                        refiner = field("refiner_model", gr.Dropdown(
                            [NO_MODEL_LABEL, *self._model_choices(values["base_model"])],
                            value=values["refiner_model"], label="Refiner", allow_custom_value=True,
                            interactive=not initial.locked, elem_id="foci-refiner"))
                        self._controls_at("models", values, locked=initial.locked)
                        lora_names: list[gr.Dropdown] = []
                        for row in range(self.lora_rows):
                            with gr.Row():
                                field(f"lora_enabled_{row}", gr.Checkbox(values[f"lora_enabled_{row}"],
                                                                         label="Enable", scale=1,
                                                                         min_width=60))
                                lora_names.append(field(f"lora_name_{row}", gr.Dropdown(
                                    [NO_MODEL_LABEL, *self._files("loras")], value=values[f"lora_name_{row}"],
                                    label=f"LoRA {row + 1}", allow_custom_value=True, scale=5)))
                                field(f"lora_weight_{row}", gr.Slider(
                                    settings.default_loras_min_weight, settings.default_loras_max_weight,
                                    value=values[f"lora_weight_{row}"], step=0.01, label="Weight", scale=5))
                        refresh = gr.Button("Refresh files", size="sm")
                    with gr.Tab("Advanced", elem_id="foci-tab-advanced"):
                        self._controls_at("advanced", values, locked=initial.locked)
                        developer = gr.Checkbox(settings.default_developer_debug_mode_checkbox,
                                                label="Developer options", elem_id="foci-developer")
                        with gr.Column(visible=settings.default_developer_debug_mode_checkbox) as developer_box:
                            self._developer_controls(values, locked=initial.locked)
            self._wire(dict(
                preview=preview, progress=progress, gallery=gallery, prompt=prompt, generate=generate,
                load_parameters=load_parameters, stop=stop, skip=skip, advanced=advanced, forever=forever,
                right=right, preset=preset, random=random, image_file=image_file, style_search=style_search,
                styles=styles, base=base, refiner=refiner, lora_names=lora_names, refresh=refresh,
                developer=developer, developer_box=developer_box, saved=saved, **panel))
        return blocks

    def _input_panel(self, enabled: gr.Checkbox) -> dict[str, Any]:
        """The Input Image panel under the prompt (hidden until "Input Image" is ticked): the Upscale or Variation
        and the Inpaint or Outpaint tabs. Its controls go to :attr:`_input` by their
        :data:`~foci.apps.ui_input_image.INPUT_CONTROLS` names; returns the layout parts the events need."""
        control = self._input
        control["input_image_enabled"] = enabled
        control["input_tab"] = gr.State("uov")
        layout = method_layout(INPAINT_DEFAULT)
        image_options: dict[str, Any] = dict(type="filepath", image_mode=None, format="png",
                                             sources=["upload", "clipboard"])
        with gr.Column(visible=False, elem_id="foci-input-panel") as panel, \
                gr.Tabs(selected="uov", elem_id="foci-input-tabs") as tabs:
            with gr.Tab("Upscale or Variation", id="uov", elem_id="foci-uov-tab") as uov_tab, gr.Row():
                control["uov_image"] = gr.Image(label="Image", height=300, elem_id="foci-uov-image",
                                                **image_options)
                control["uov_method"] = gr.Radio(list(UOV_METHODS), value="Disabled", label="Upscale or Variation",
                                                 elem_id="foci-uov-method")
            with gr.Tab("Inpaint or Outpaint", id="inpaint", elem_id="foci-inpaint-tab") as inpaint_tab, gr.Row():
                with gr.Column():
                    control["inpaint_editor"] = gr.ImageEditor(
                        label="Image — paint the area to change (white = repaint)", type="numpy",
                        image_mode="RGBA", format="png", sources=["upload", "clipboard"], transforms=(),
                        layers=False, brush=gr.Brush(colors=["#FFFFFF"], default_color="#FFFFFF",
                                                     color_mode="fixed"),
                        height=500, elem_id="foci-inpaint-editor")
                    control["inpaint_advanced"] = gr.Checkbox(False, label="Enable Advanced Masking Features",
                                                              elem_id="foci-inpaint-advanced")
                    control["inpaint_method"] = gr.Dropdown(list(INPAINT_METHODS), value=INPAINT_DEFAULT,
                                                            label="Method", elem_id="foci-inpaint-method")
                    control["inpaint_prompt"] = gr.Textbox(label="Inpaint Additional Prompt", lines=2,
                                                           placeholder="Describe what you want to inpaint.",
                                                           visible=layout.prompt_box,
                                                           elem_id="foci-inpaint-prompt")
                    quick_list = gr.Dataset(components=[control["inpaint_prompt"]], label="Additional Prompt "
                                            "Quick List", samples=[[text] for text in EXAMPLE_INPAINT_PROMPTS],
                                            visible=layout.quick_list, elem_id="foci-inpaint-quick-list")
                    control["outpaint"] = gr.CheckboxGroup(list(OUTPAINT_DIRECTIONS), value=[],
                                                           label="Outpaint Direction", visible=layout.outpaint,
                                                           elem_id="foci-outpaint")
                with gr.Column(visible=False, elem_id="foci-masking") as masking:
                    control["inpaint_mask_upload"] = gr.Image(label="Mask Upload (white = repaint)", height=300,
                                                              elem_id="foci-mask-upload", **image_options)
                    control["invert_mask"] = gr.Checkbox(False, label="Invert Mask When Generating",
                                                         elem_id="foci-invert-mask")
                    self._input_field_control("mask_dilate", "Mask Erode or Dilate", 0, step=1,
                                              elem_id="foci-mask-dilate")
                    control["inpaint_engine"] = gr.Dropdown(list(INPAINT_ENGINES), value=layout.engine,
                                                            label="Inpaint Engine", elem_id="foci-inpaint-engine")
                    self._input_field_control("inpaint_strength", "Inpaint Denoising Strength", layout.strength,
                                              step=0.001, elem_id="foci-inpaint-strength")
                    self._input_field_control("inpaint_respective_field", "Inpaint Respective Field",
                                              layout.respective_field, step=0.001,
                                              elem_id="foci-inpaint-respective-field")
        return dict(input_panel=panel, input_tabs=tabs, uov_tab=uov_tab, inpaint_tab=inpaint_tab,
                    quick_list=quick_list, masking=masking)

    def _input_field_control(self, name: str, label: str, value: float, *, step: float, elem_id: str) -> None:
        """A slider of the Input Image panel whose range is the task field's bounds."""
        facts = field_facts(name)  # strength and respective field: ``Strength | None`` keeps its 0…1 bounds inside
        low, high = (facts.ge, facts.le) if facts.ge is not None and facts.le is not None else (0.0, 1.0)
        self._input[name] = gr.Slider(low, high, value=value, step=step, label=label, elem_id=elem_id)

    def _controls_at(self, place: str, values: dict[str, Any], *, locked: bool) -> None:
        """The controls of every field the table puts at ``place``, in field order."""
        for facts in task_fields():
            if facts.ui is not None and facts.ui.place == place:
                self._fields(facts.name, self._control(facts, values[facts.name], locked=locked))

    def _control(self, facts: FieldFacts, value: Any, *, locked: bool) -> gr.components.Component:
        """The Gradio component of a field's ``Control``: range from the field's bounds (the image number up to
        the server's maximum), choices from its type; restricted controls locked while ``locked``."""
        ui = facts.ui
        assert ui is not None
        options: dict[str, Any] = {"label": ui.label}
        if ui.elem_id:
            options["elem_id"] = ui.elem_id
        if facts.name in RESTRICTED_CONTROLS:
            options["interactive"] = not locked
        maximum = self.settings.default_max_image_number if facts.name == "image_number" else facts.le
        if ui.kind == "slider":
            return gr.Slider(facts.ge, maximum, value=value, step=ui.step, **options)
        if ui.kind == "number":
            return gr.Number(value, precision=0 if facts.type is int else None, minimum=facts.ge, maximum=maximum,
                             **options)
        if ui.kind == "checkbox":
            return gr.Checkbox(value, **options)
        if ui.kind == "radio":
            return gr.Radio(list(facts.choices or ()), value=value, **options)
        if ui.kind == "dropdown" and ui.convert == "vae":
            return gr.Dropdown([DEFAULT_VAE_LABEL, *self._files("vae")], value=value, allow_custom_value=True,
                               **options)
        if ui.kind == "dropdown":
            return gr.Dropdown(list(facts.choices or ()), value=value, **options)
        raise ValueError(f"field {facts.name!r}: no generic control of kind {ui.kind!r}")

    def _developer_controls(self, values: dict[str, Any], *, locked: bool) -> None:
        field = self._fields
        with gr.Tabs():
            with gr.Tab("Sampling"):
                self._controls_at("sampling", values, locked=locked)
            with gr.Tab("Overrides"):
                self._controls_at("overrides", values, locked=locked)
            with gr.Tab("FreeU"):  # Fooocus's slider ranges, narrower than the 0–10 the task accepts
                field("freeu_enabled", gr.Checkbox(values["freeu_enabled"], label="Enabled"))
                field("freeu_b1", gr.Slider(0.0, 2.0, value=values["freeu_b1"], step=0.01, label="B1"))
                field("freeu_b2", gr.Slider(0.0, 2.0, value=values["freeu_b2"], step=0.01, label="B2"))
                field("freeu_s1", gr.Slider(0.0, 4.0, value=values["freeu_s1"], step=0.01, label="S1"))
                field("freeu_s2", gr.Slider(0.0, 4.0, value=values["freeu_s2"], step=0.01, label="S2"))

    # ---------------------------------------------------------------------------------------- events
    def _wire(self, parts: dict[str, Any]) -> None:
        fields = self._fields.components
        names = {component: name for name, component in fields.items()}
        panel = self._input
        inputs = {*fields.values(), *panel.values(), parts["random"], parts["forever"]}
        running = [parts["preview"], parts["progress"], parts["gallery"], parts["generate"], parts["stop"],
                   parts["skip"], fields["seed"]]
        all_fields = list(fields.values())

        def values_of(data: dict[Any, Any]) -> dict[str, Any]:
            return {names[component]: value for component, value in data.items() if component in names}

        def generate(data: dict[Any, Any], request: gr.Request) -> Iterator[list[Any]]:
            yield from self.generate(values_of(data), random=bool(data[parts["random"]]),
                                     forever=bool(data[parts["forever"]]), request=request,
                                     inputs={name: data[component] for name, component in panel.items()})

        parts["generate"].click(generate, inputs=inputs, outputs=running, concurrency_limit=None,
                                show_progress="hidden", api_visibility="private")
        parts["stop"].click(self.stop, outputs=[parts["stop"], parts["skip"]], concurrency_limit=None,
                            show_progress="hidden", api_visibility="private")
        parts["skip"].click(self.skip, concurrency_limit=None, show_progress="hidden", api_visibility="private")
        parts["forever"].change(self.set_forever, inputs=parts["forever"], show_progress="hidden",
                                api_visibility="private")
        parts["advanced"].change(lambda shown: gr.Column(visible=shown), inputs=parts["advanced"],
                                 outputs=parts["right"], show_progress="hidden", api_visibility="private")
        parts["developer"].change(lambda shown: gr.Column(visible=shown), inputs=parts["developer"],
                                  outputs=parts["developer_box"], show_progress="hidden", api_visibility="private")
        parts["random"].change(lambda is_random: gr.Textbox(visible=not is_random), inputs=parts["random"],
                               outputs=fields["seed"], show_progress="hidden", api_visibility="private")
        parts["prompt"].change(lambda text: gr.Button(visible=_looks_like_json(text)), inputs=parts["prompt"],
                               outputs=parts["load_parameters"], show_progress="hidden", api_visibility="private")
        restricted = [fields[name] for name in RESTRICTED_CONTROLS]
        fields["performance"].change(self.change_performance,
                                     inputs=[fields["performance"], parts["saved"], *restricted],
                                     outputs=[*restricted, fields["negative_prompt"], parts["saved"]],
                                     show_progress="hidden", api_visibility="private")
        restore_outputs = [*all_fields, *self._panel_outputs(parts), parts["random"], parts["load_parameters"],
                           parts["saved"]]
        parts["load_parameters"].click(self.load_from_text, inputs=parts["prompt"], outputs=restore_outputs,
                                       show_progress="hidden", api_visibility="private")
        parts["image_file"].upload(self.load_from_image, inputs=parts["image_file"], outputs=restore_outputs,
                                   show_progress="hidden", api_visibility="private")
        parts["style_search"].change(lambda search, selected: gr.CheckboxGroup(
            choices=self._style_choices(list(selected or []), search or "")),
            inputs=[parts["style_search"], parts["styles"]], outputs=parts["styles"], show_progress="hidden",
            api_visibility="private")
        parts["preset"].change(self.load_preset_and_lock, inputs=[parts["preset"], *all_fields],
                               outputs=[*all_fields, parts["saved"]], show_progress="hidden",
                               api_visibility="private")
        self._wire_input_panel(parts)
        model_dropdowns = [parts["base"], parts["refiner"], *parts["lora_names"]]
        parts["refresh"].click(self.refresh_files, inputs=[parts["base"]], outputs=model_dropdowns,
                               show_progress="hidden", api_visibility="private")

    def _wire_input_panel(self, parts: dict[str, Any]) -> None:
        """The Input Image panel's events: show it, track the selected tab, the method's controls and defaults,
        advanced masking, the quick list, and a check of each uploaded file."""
        panel = self._input
        hidden: dict[str, Any] = dict(show_progress="hidden", api_visibility="private")
        panel["input_image_enabled"].change(lambda shown: gr.Column(visible=shown),
                                            inputs=panel["input_image_enabled"], outputs=parts["input_panel"],
                                            **hidden)
        for tab in INPUT_TABS:
            parts[f"{tab}_tab"].select(lambda tab=tab: tab, outputs=panel["input_tab"], **hidden)
        # .input, not .change: restoring a task sets the method without resetting its restored values
        panel["inpaint_method"].input(self.change_inpaint_method, inputs=panel["inpaint_method"],
                                      outputs=self._method_outputs(parts), **hidden)
        panel["inpaint_advanced"].change(lambda shown: gr.Column(visible=shown), inputs=panel["inpaint_advanced"],
                                         outputs=parts["masking"], **hidden)
        parts["quick_list"].click(lambda sample: sample[0] if sample else gr.skip(), inputs=parts["quick_list"],
                                  outputs=panel["inpaint_prompt"], **hidden)
        for name in ("uov_image", "inpaint_mask_upload"):
            panel[name].upload(self.check_upload, inputs=panel[name], outputs=panel[name], preprocess=False,
                               **hidden)

    def _panel_outputs(self, parts: dict[str, Any]) -> list[Any]:
        """The panel's components a restored task updates, in :data:`PANEL_RESTORED` order."""
        return [self._input[key] if key in self._input else parts[key] for key in PANEL_RESTORED]

    def _panel_updates(self, task: GenerationTask) -> list[Any]:
        """Updates showing ``task`` in the Input Image panel (:data:`PANEL_RESTORED` order); an image the input
        store no longer holds is left as it is, with a warning to upload it again."""
        state = panel_from_task(task, self.engine.inputs if task.input_image is not None else None)
        for warning in state.warnings:
            gr.Warning(warning)
        values = state.values
        layout = method_layout(values["inpaint_method"])
        special = {
            "input_tabs": gr.Tabs(selected=values["input_tab"]),
            "uov_image": values.get("uov_image", gr.skip()),
            "inpaint_editor": values.get("inpaint_editor", gr.skip()),
            "inpaint_prompt": gr.update(visible=layout.prompt_box, value=values["inpaint_prompt"]),
            "quick_list": gr.Dataset(visible=layout.quick_list),
            "outpaint": gr.update(visible=layout.outpaint, value=values["outpaint"]),
        }
        return [special[key] if key in special else values[key] for key in PANEL_RESTORED]

    def _method_outputs(self, parts: dict[str, Any]) -> list[Any]:
        panel = self._input
        return [panel["inpaint_prompt"], parts["quick_list"], panel["outpaint"],
                *[panel[name] for name in ADVANCED_FIELDS]]

    def change_inpaint_method(self, method: str) -> list[Any]:
        """The user chose an inpaint method: show its controls and reset engine, strength and respective field to
        its defaults (as Fooocus does); the prompt box empties when hidden, the outpaint directions likewise."""
        return self._method_updates(method, reset=True)

    @staticmethod
    def _method_updates(method: str, *, reset: bool) -> list[Any]:
        layout = method_layout(method)
        defaults = [layout.engine, layout.strength, layout.respective_field] if reset else [gr.skip()] * 3
        prompt = gr.update(visible=True) if layout.prompt_box else gr.update(visible=False, value="")
        outpaint = gr.update(visible=True) if layout.outpaint else gr.update(visible=False, value=[])
        return [prompt, gr.Dataset(visible=layout.quick_list), outpaint, *defaults]

    def check_upload(self, payload: Mapping[str, Any] | None) -> Any:
        """An image dropped on the panel (raw upload, not yet decoded): one warning and the upload removed when it
        is not an image Foci reads or is too large, so Generate never sees it."""
        path = payload.get("path") if isinstance(payload, Mapping) else None
        if not path:
            return gr.skip()
        try:
            size = Path(path).stat().st_size
            if size > MAX_INPUT_BYTES:
                raise ImageInputError(f"the uploaded file is {size / 2**20:.1f} MiB; Foci accepts image files of "
                                      f"at most {MAX_INPUT_BYTES // 2**20} MiB")
            check_image_bytes(Path(path).read_bytes(), what="the uploaded file")
        except (ImageInputError, OSError) as error:
            gr.Warning(str(error))
            return None
        return gr.skip()

    # -------------------------------------------------------------------------------------- generation
    def _running_updates(self, *, preview: Any = None, progress: str | None = None, gallery: Any = None,
                         seed: Any = None, done: bool = False) -> list[Any]:
        skip_visible = not done and self.worker is not None
        return [
            gr.Image(visible=False, value=None) if done else (preview if preview is not None else gr.skip()),
            progress if progress is not None else gr.skip(),
            gallery if gallery is not None else gr.skip(),
            gr.Button(visible=done),
            gr.Button(visible=not done),
            gr.Button(visible=skip_visible),
            seed if seed is not None else gr.skip(),
        ]

    def generate(self, values: dict[str, Any], *, random: bool, forever: bool, request: gr.Request | None = None,
                 inputs: Mapping[str, Any] | None = None) -> Iterator[list[Any]]:
        """The Generate handler: submit one job (again and again with "generate forever") and stream it.
        ``inputs`` are the Input Image panel's values."""
        session = self._session(request)
        session.forever = forever
        try:
            task = self.make_task(values, random=random, inputs=inputs)
        except UIError as error:
            raise gr.Error(str(error), print_exception=False) from None
        try:
            while True:
                job = self.store.submit(task)
                session.job_id = job.id
                if self.worker is not None:
                    self.worker.wake()
                yield self._running_updates(progress=progress_html(0, "Waiting for the worker…"), gallery=[],
                                            seed=str(task.seed))
                yield from self._follow(job.id)
                if self.store.get(job.id).state is not JobState.DONE or not session.forever:
                    break
                task = task.model_copy(update={"seed": random_seed() if random else
                                               (task.seed + task.image_number) % (MAX_SEED + 1)})
        finally:
            session.job_id = None
            self._forget(session)
        yield self._running_updates(done=True)

    def _gallery(self, images: list[JobImage]) -> list[tuple[str, str]]:
        return [(str(self.output_dir / image.path), f"seed {image.seed}") for image in images]

    def _follow(self, job_id: str) -> Iterator[list[Any]]:
        """Stream one job's events until it ends (polls the store too, so no end is missed)."""
        subscription = self.bus.subscribe(job_id)
        images: list[JobImage] = []
        last_text = ""
        try:
            while True:
                first: JobEvent | None = subscription.get(POLL_SECONDS)
                if first is None:
                    job = self.store.get(job_id)
                    if job.state in FINISHED_STATES:
                        yield self._finished(job)
                        return
                    text = self._waiting_text(job)
                    if text and text != last_text:
                        last_text = text
                        yield self._running_updates(progress=progress_html(0, text))
                    continue
                for event in _coalesce(first, subscription):
                    update = self._event_update(event, images)
                    if update is not None:
                        yield update
                    if event.kind in ("done", "failed", "cancelled"):
                        yield self._finished(self.store.get(job_id))
                        return
        finally:
            subscription.close()

    def _waiting_text(self, job: Job) -> str:
        if job.state is not JobState.QUEUED:
            return ""
        queued = self.store.list(states=[JobState.QUEUED], limit=1000)
        ahead = next((index for index, other in enumerate(queued) if other.id == job.id), 0)
        return f"Waiting in the queue ({ahead} job{'s' if ahead != 1 else ''} ahead)" if ahead else \
            "Waiting for the worker…"

    def _event_update(self, event: JobEvent, images: list[JobImage]) -> list[Any] | None:
        if event.kind == "started":
            return self._running_updates(progress=progress_html(0, "Starting…"))
        if event.kind == "progress" and event.progress is not None and event.progress.download is not None:
            download = event.progress.download  # a model file the job needs: its bytes, not sampling steps
            share = 100.0 * download.downloaded_bytes / download.total_bytes if download.total_bytes else 0.0
            return self._running_updates(progress=progress_html(share, download.describe()))
        if event.kind == "progress" and event.progress is not None:
            step = event.progress
            text = (f"Sampling step {step.step}/{step.total_steps}, image {step.image_index + 1}/{step.image_count}"
                    f"{_eta(step.eta_seconds)}")
            preview = _decode_preview(event.preview_png)
            return self._running_updates(
                progress=progress_html(step.percent, text),
                preview=gr.Image(value=preview, visible=True) if preview is not None else None)
        if event.kind == "image" and event.image is not None:
            images.append(event.image)
            return self._running_updates(gallery=self._gallery(images))
        if event.kind == "skipped":
            gr.Info("Image skipped")
        return None

    def _finished(self, job: Job) -> list[Any]:
        if job.state is JobState.DONE:
            count = len(job.images)
            skipped = f", {job.skipped_images} skipped" if job.skipped_images else ""
            text = f"Finished: {count} image{'s' if count != 1 else ''}{skipped}"
        elif job.state is JobState.CANCELLED:
            text = "Stopped"
        else:
            text = f"Failed: {job.error or 'unknown error'}"
            gr.Warning(text)
        percent = 100 if job.state is JobState.DONE else 0
        return self._running_updates(progress=progress_html(percent, text, state=job.state.value),
                                     gallery=self._gallery(job.images),
                                     preview=gr.Image(visible=False, value=None))

    def stop(self, request: gr.Request) -> list[Any]:
        """Stop: cancel the session's job (queued or running) and end "generate forever"."""
        session = self._session(request)
        session.forever = False
        if session.job_id is not None:
            with contextlib.suppress(JobError):  # it ended meanwhile
                self.store.cancel(session.job_id)
        return [gr.Button(visible=False), gr.Button(visible=False)]

    def skip(self, request: gr.Request) -> None:
        """Skip: abandon the current image of the session's running job; the job goes on with the next."""
        job_id = self._session(request).job_id
        if job_id is None or self.worker is None:
            return
        if not self.worker.skip(job_id):
            gr.Info("Nothing to skip yet")

    def set_forever(self, value: bool, request: gr.Request) -> None:
        """Tick/untick "Generate forever" while a job runs."""
        self._session(request).forever = bool(value)

    # -------------------------------------------------------------------------------------- restoring
    def _restore(self, task: GenerationTask) -> list[Any]:
        """Updates for every control, "Random", "Load Parameters" and the saved-values state showing ``task``."""
        values = values_from_task(task, lora_rows=self.lora_rows)
        known = set(self.styles.names())
        unknown = [name for name in values["styles"] if name not in known]
        if unknown:  # e.g. Fooocus's own styles: name them, and how to get them, rather than drop them silently
            gr.Warning(f"{len(unknown)} style(s) of these parameters are unknown to Foci and were left out: "
                       f"{', '.join(unknown)}. To use Fooocus's styles, import your Fooocus install's style files "
                       "with `foci styles import FOOOCUS_FOLDER` and restart.")
        values["styles"] = [name for name in values["styles"] if name in known]
        lock = self._load_lock(values)
        updates = self._updates(values, lock)
        updates[list(self._fields.components).index("seed")] = gr.Textbox(value=values["seed"], visible=True)
        return [*updates, *self._panel_updates(task), False, gr.Button(visible=False), lock.saved]

    def _task_from_payload(self, payload: str | dict[str, Any], scheme: str | None) -> GenerationTask:
        return task_from_metadata(payload, scheme, model_files=self._files("checkpoints"),
                                  lora_files=self._files("loras"), vae_files=self._files("vae"),
                                  style_library=self.styles)

    def load_from_text(self, text: str) -> list[Any]:
        """Load Parameters: fill every control from metadata pasted into the prompt box."""
        try:
            task = self._task_from_payload(text or "", None)
        except ValueError as error:
            raise gr.Error(f"cannot read these parameters: {error}", print_exception=False) from None
        return self._restore(task)

    def load_from_image(self, path: str | None) -> list[Any]:
        """Fill every control from the metadata embedded in a dropped image."""
        if not path:
            raise gr.Error("no image given", print_exception=False)
        try:
            found = read_metadata(Path(path))
            if found is None:
                raise ValueError("the image holds no generation metadata")
            task = self._task_from_payload(found[1], found[0])
        except ValueError as error:
            raise gr.Error(f"cannot load parameters: {error}", print_exception=False) from None
        return self._restore(task)

    def load_preset(self, name: str | None, *current: Any) -> list[Any]:
        """Switch preset: controls take the preset's defaults (the prompts are kept unless it sets them).
        One update per control, in :attr:`control_names` order."""
        values = self._preset_values(name, current)
        return [gr.skip()] * len(current) if values is None else self._updates(values)

    def load_preset_and_lock(self, name: str | None, *current: Any) -> list[Any]:
        """:meth:`load_preset`, plus the new saved-values state (the preset's own values in a restricted mode)."""
        values = self._preset_values(name, current)
        if values is None:
            return [gr.skip()] * (len(current) + 1)
        lock = self._load_lock(values)
        return [*self._updates(values, lock), lock.saved]

    def _preset_values(self, name: str | None, current: Sequence[Any]) -> dict[str, Any] | None:
        if not name:
            return None
        try:
            settings, messages = load_settings(preset=name, root=self.root, known_styles=self.styles.names())
            task = GenerationTask(**settings.task_defaults())
        except (ValueError, ValidationError) as error:
            raise gr.Error(f"cannot load preset {name!r}: {error}", print_exception=False) from None
        for message in messages:
            gr.Warning(message)
        values = values_from_task(task, lora_rows=self.lora_rows)
        kept = dict(zip(self._fields.components, current, strict=True))
        for key in ("prompt", "negative_prompt", "seed"):
            if not values[key] or key == "seed":
                values[key] = kept[key]
        return values

    def _updates(self, values: dict[str, Any], lock: PerformanceLock | None = None) -> list[Any]:
        """One update per task control, in control order, showing ``values``; the restricted controls are locked
        (showing the forced values) or unlocked, and the negative prompt hidden or shown, per ``lock`` (by
        default the one the values' performance calls for)."""
        lock = self._load_lock(values) if lock is None else lock
        updates: list[Any] = []
        for key in self._fields.components:
            if key == "aspect_ratio":
                updates.append(gr.Radio(choices=self._aspect_choices(values[key]), value=values[key]))
            elif key == "styles":
                updates.append(gr.CheckboxGroup(choices=self._style_choices(values[key]), value=values[key]))
            elif key in RESTRICTED_CONTROLS:
                updates.append(gr.update(value=lock.values[key], interactive=not lock.locked))
            elif key == "negative_prompt":
                updates.append(gr.Textbox(value=values[key], visible=not lock.locked))
            else:
                updates.append(values[key])
        return updates

    # -------------------------------------------------------------------------------------- performance lock
    def _unrestricted_defaults(self) -> dict[str, Any]:
        task = self.default_task
        if forced_control_values(task.performance) is not None:
            task = GenerationTask()
        return values_from_task(task, lora_rows=0)

    def _load_lock(self, values: Mapping[str, Any]) -> PerformanceLock:
        """The lock for values being loaded (UI defaults, a preset, metadata). In a restricted mode a loaded value
        equal to the forced one is no choice of the user's, so the value saved for it is the UI default."""
        lock = performance_lock(values["performance"], values)
        forced = forced_control_values(values["performance"])
        if lock.saved is None or forced is None:
            return lock
        defaults = self._unrestricted_defaults()
        saved = {name: defaults[name] if name in forced and value == forced[name] else value
                 for name, value in lock.saved.items()}
        return PerformanceLock(lock.values, True, saved)

    def change_performance(self, performance: str, saved: dict[str, Any] | None, *current: Any) -> list[Any]:
        """Performance changed: lock the restricted controls on their forced values (restricted modes) or unlock
        them on the values they had before. ``current`` are the :data:`RESTRICTED_CONTROLS` values in order.
        Returns their updates (``gr.update`` dicts: a component instance would be checked against choices it
        lacks), then the negative prompt's (hidden while locked), then the new saved state."""
        lock = performance_lock(performance, dict(zip(RESTRICTED_CONTROLS, current, strict=True)), saved)
        updates = [gr.update(value=lock.values[name], interactive=not lock.locked) for name in RESTRICTED_CONTROLS]
        return [*updates, gr.Textbox(visible=not lock.locked), lock.saved]

    def refresh_files(self, base: str | None) -> list[Any]:
        """Rescan the model folders into the model and LoRA dropdowns."""
        models = self._model_choices(base)
        loras = [NO_MODEL_LABEL, *self._files("loras")]
        return [gr.Dropdown(choices=models), gr.Dropdown(choices=[NO_MODEL_LABEL, *models]),
                *[gr.Dropdown(choices=loras) for _ in range(self.lora_rows)]]

    # -------------------------------------------------------------------------------------- history page
    def history_router(self, *, ui_path: str = "/", dependencies: Sequence[Any] = ()) -> APIRouter:
        """``GET /history`` (recent jobs with thumbnails, linking back to the UI at ``ui_path``) and
        ``GET /history/image/{job_id}/{index}``; ``dependencies`` (e.g. an auth check) guard both."""
        router = APIRouter(dependencies=list(dependencies))

        @router.get(HISTORY_PATH, response_class=HTMLResponse, include_in_schema=False)
        def history(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> HTMLResponse:
            return HTMLResponse(self.history_html(limit=limit, offset=offset, ui_path=ui_path))

        @router.get(HISTORY_PATH + "/image/{job_id}/{index}", include_in_schema=False)
        def history_image(job_id: str, index: int) -> FileResponse:
            return FileResponse(self.image_file(job_id, index))

        return router

    def image_file(self, job_id: str, index: int) -> Path:
        """The file of a job's ``index``-th image; 404 when unknown or outside the output folder."""
        try:
            job = self.store.get(job_id)
        except JobError:
            raise HTTPException(404, f"unknown job {job_id!r}") from None
        if not 0 <= index < len(job.images):
            raise HTTPException(404, f"job {job_id!r} has no image {index}")
        path = (self.output_dir / job.images[index].path).resolve()
        if not path.is_relative_to(self.output_dir) or not path.is_file():
            raise HTTPException(404, "image file not found")
        return path

    def history_html(self, *, limit: int = 50, offset: int = 0, ui_path: str = "/") -> str:
        """A self-contained page listing recent jobs, newest first, with their images as thumbnails."""
        jobs = sorted(self.store.list(limit=limit, offset=offset), key=lambda job: job.created_at, reverse=True)
        rows = []
        for job in jobs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
            thumbs = "".join(
                f'<a href="{HISTORY_PATH}/image/{job.id}/{index}" target="_blank">'
                f'<img src="{HISTORY_PATH}/image/{job.id}/{index}" alt="seed {image.seed}" loading="lazy" '
                f'width="128"></a>'
                for index, image in enumerate(job.images))
            error = f'<div class="error">{html.escape(job.error)}</div>' if job.error else ""
            settings = json.dumps({"seed": job.task.seed, "size": job.task.aspect_ratio,
                                   "performance": job.task.performance, "styles": job.task.styles})
            rows.append(
                f'<tr class="job {job.state.value}" data-job="{html.escape(job.id)}"><td>{when}</td>'
                f'<td>{job.state.value}</td><td class="prompt">{html.escape(job.task.prompt)}{error}'
                f'<div class="settings">{html.escape(settings)}</div></td><td>{thumbs}</td></tr>')
        body = "".join(rows) or '<tr><td colspan="4">No jobs yet.</td></tr>'
        newer = max(0, offset - limit)
        links = (f'<a href="{HISTORY_PATH}?limit={limit}&offset={newer}">newer</a> ' if offset else "") + \
            (f'<a href="{HISTORY_PATH}?limit={limit}&offset={offset + limit}">older</a>'
             if len(jobs) == limit else "")
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(self.title)} history'
                '</title><style>body{font-family:sans-serif;margin:1.5em;background:#111;color:#ddd}'
                'table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #333;padding:.4em;'
                'vertical-align:top;text-align:left}img{margin:2px;border-radius:4px}.settings{color:#888;'
                'font-size:.8em}.error{color:#f66}a{color:#8af}</style></head><body>'
                f'<h1>Recent jobs</h1><p><a href="{html.escape(ui_path)}">back to the generator</a></p>'
                '<table><tr><th>Created</th><th>State</th><th>Prompt</th><th>Images</th></tr>'
                f'{body}</table><p>{links}</p></body></html>')


def _coalesce(first: JobEvent, subscription: Subscription) -> list[JobEvent]:
    """``first`` and the events already buffered after it, keeping only the last of each run of progress events
    (a lagging browser gets the newest step and preview, not every one)."""
    events = [first]
    while (event := subscription.get_nowait()) is not None:
        if event.kind == "progress" and events[-1].kind == "progress":
            events[-1] = event
        else:
            events.append(event)
    return events


def _looks_like_json(text: str | None) -> bool:
    stripped = (text or "").strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


# ------------------------------------------------------------------------------------------------- public API
def build_ui(*, store: JobStore, bus: EventBus, worker: Worker | None, engine: Engine, settings: FociSettings,
             output_dir: Path, defaults: Mapping[str, Any] | None = None, root: Path | None = None,
             preset: str | None = "default") -> gr.Blocks:
    """The Gradio app. ``defaults`` (``GenerationTask`` keyword arguments) override the settings' task defaults;
    a ``seed`` among them also unticks "Random". ``root`` is where user presets live (default: the working
    directory); ``preset`` is the one the Preset dropdown shows selected (the one ``settings`` came from)."""
    ui = FociUI(store=store, bus=bus, worker=worker, engine=engine, settings=settings, output_dir=output_dir,
                defaults=defaults, root=root, preset=preset)
    return ui.build()


def mount_ui(app: FastAPI, blocks: gr.Blocks, path: str = "/", *, history_dependencies: Sequence[Any] = (),
             **gradio_options: Any) -> FastAPI:
    """Serve ``blocks`` on ``app`` at ``path`` plus the ``/history`` page. Call it after adding the app's other
    routes: a UI mounted at ``/`` answers every path not routed before it.

    ``history_dependencies`` guard the history routes (FastAPI dependencies, e.g. the API's credential check);
    ``gradio_options`` go to ``gr.mount_gradio_app`` (``auth``, ``root_path``, ``allowed_paths``, …).
    """
    allowed = [str(entry) for entry in gradio_options.pop("allowed_paths", None) or []]
    if isinstance(blocks, FociBlocks):
        app.include_router(blocks.controller.history_router(ui_path=path, dependencies=history_dependencies))
        allowed.append(str(blocks.controller.output_dir))
    options: dict[str, Any] = {
        "css": (ASSETS_DIR / "foci.css").read_text(encoding="utf-8"),
        "js": (ASSETS_DIR / "foci.js").read_text(encoding="utf-8"),
        "footer_links": [], "show_error": True, **gradio_options,
    }
    return gr.mount_gradio_app(app, blocks, path=path, allowed_paths=allowed, **options)
