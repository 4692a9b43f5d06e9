"""The browser UI (Gradio): the Fooocus layout, driving the same job queue as the HTTP API.

``build_ui`` returns a :class:`FociBlocks` (a ``gr.Blocks``) whose :class:`FociUI` controller owns all state:
the controls, the per-browser-session running job and the "generate forever" flags. Generate builds one
:class:`~foci.task.GenerationTask` from the controls, submits it to the shared :class:`JobStore` and streams that
job's :class:`EventBus` events into the preview, progress bar and gallery. ``mount_ui`` serves it on a FastAPI app
together with a small ``/history`` page of recent jobs.

The pure controls ↔ task functions live in :mod:`foci.apps.ui_controls`, the layout in :mod:`foci.apps.ui_layout`,
the Input Image panel in :mod:`foci.apps.ui_input_panel`, the history page in :mod:`foci.apps.ui_history`; their
public names are re-exported here.

As in Fooocus, choosing a restricted performance (Extreme Speed, Lightning, Hyper-SD) locks the controls whose
values that mode forces (:data:`RESTRICTED_CONTROLS`), shows the forced values and hides the negative prompt;
choosing Quality or Speed again unlocks them and brings back the values they had (kept per browser session in a
``gr.State``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI
from pydantic import ValidationError

from foci.apps.ui_controls import (
    RESTRICTED_CONTROLS,
    UI_CONVERTERS,
    PerformanceLock,
    UIConverter,
    UIError,
    _decode_preview,
    _eta,
    forced_control_values,
    parse_seed,
    performance_lock,
    progress_html,
    task_from_values,
    values_from_task,
)
from foci.apps.ui_history import HISTORY_PATH, HistoryPages
from foci.apps.ui_input_image import InputImageUIError, input_image_fields
from foci.apps.ui_input_panel import PANEL_RESTORED, InputPanel
from foci.apps.ui_layout import PROMPT_PLACEHOLDER, FociBlocks, FociLayout, _Field
from foci.engine.engine import Engine
from foci.messages import validation_message
from foci.records.metadata import NO_MODEL_LABEL, task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.admission import AdmissionError, admit
from foci.service.events import EventBus, JobEvent, Subscription
from foci.service.jobs import Job, JobError, JobImage, JobState, JobStore
from foci.service.worker import Worker
from foci.settings.aspect_ratios import aspect_label
from foci.settings.config import FociSettings, load_settings
from foci.settings.performance import performance_lora_names
from foci.task import MAX_SEED, GenerationTask, random_seed
from foci.text.styles import StyleLibrary

__all__ = [  # the names other modules and tests import from here (most live in the ui_* modules)
    "HISTORY_PATH", "PANEL_RESTORED", "PROMPT_PLACEHOLDER", "RESTRICTED_CONTROLS", "UI_CONVERTERS", "FociBlocks",
    "FociUI", "PerformanceLock", "UIConverter", "UIError", "build_ui", "forced_control_values", "mount_ui",
    "parse_seed", "performance_lock", "progress_html", "task_from_values", "values_from_task",
]

ASSETS_DIR = Path(__file__).with_name("ui_assets")
FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
POLL_SECONDS = 0.5


@dataclass
class _Session:
    """What one browser session is doing: its current job and whether "generate forever" is on."""

    key: str
    job_id: str | None = None
    forever: bool = False


class FociUI(FociLayout, InputPanel, HistoryPages):
    """Builds the Gradio layout (:class:`~foci.apps.ui_layout.FociLayout`) and handles its events against a shared
    store, bus and worker."""

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
        shown: list[JobImage] = []  # the gallery: "generate forever" keeps each run's images
        try:
            while True:
                job = self.store.submit(task)
                session.job_id = job.id
                with self.bus.subscribe(job.id) as subscription:  # before the worker starts: no event is missed
                    if self.worker is not None:
                        self.worker.wake()
                    yield self._running_updates(progress=progress_html(0, "Waiting for the worker…"),
                                                gallery=self._gallery(shown), seed=str(task.seed))
                    shown = yield from self._follow(job.id, subscription, shown)
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

    def _follow(self, job_id: str, subscription: Subscription,
                earlier: list[JobImage]) -> Generator[list[Any], None, list[JobImage]]:
        """Stream one job's events until it ends (polls the store too, so no end is missed); each finished image
        joins the gallery (after the ``earlier`` ones) at once. Returns the gallery's images at the end."""
        images = list(earlier)
        last_text = ""
        while True:
            first: JobEvent | None = subscription.get(POLL_SECONDS)
            if first is None:
                job = self.store.get(job_id)
                if job.state in FINISHED_STATES:
                    return (yield from self._finish(job, earlier, images))
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
                    return (yield from self._finish(self.store.get(job_id), earlier, images))

    def _finish(self, job: Job, earlier: list[JobImage],
                streamed: list[JobImage]) -> Generator[list[Any], None, list[JobImage]]:
        """The job's final update; the gallery keeps the images shown so far (a done job's as stored)."""
        images = [*earlier, *job.images] if job.state is JobState.DONE else streamed
        yield self._finished(job, images)
        return images

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

    def _finished(self, job: Job, images: list[JobImage]) -> list[Any]:
        """The last update of a job: its outcome on the progress line (a failure only there, in red: one
        message, and no pop-up over it) and ``images`` in the gallery."""
        if job.state is JobState.DONE:
            count = len(job.images)
            skipped = f", {job.skipped_images} skipped" if job.skipped_images else ""
            text = f"Finished: {count} image{'s' if count != 1 else ''}{skipped}"
        elif job.state is JobState.CANCELLED:
            text = "Stopped"
        else:
            text = f"Failed: {job.error or 'unknown error'}"
        percent = 100 if job.state is JobState.DONE else 0
        return self._running_updates(progress=progress_html(percent, text, state=job.state.value),
                                     gallery=self._gallery(images),
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
