"""The state the endpoints share: the job store, worker, engine and settings, and the job operations on them."""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from pydantic import ValidationError

from foci.apps.api.schemas import InputImageInfo, JobPatch, JobSubmission
from foci.apps.api.uploads import IncomingImage, JobRequest, incoming_images, store_images, with_image_hashes
from foci.files.input_images import InputImageStore, image_digest
from foci.messages import validation_message
from foci.service.admission import AdmissionError, admit
from foci.service.auth import AuthConfig
from foci.service.events import EventBus, EventKind, JobEvent
from foci.service.jobs import Job, JobError, JobState, JobStore, UnknownJobError, WorkerInfo
from foci.service.webhooks import WebhookError, check_webhook_target
from foci.settings.config import FociSettings
from foci.settings.performance import performance_lora_names
from foci.task import GenerationTask, random_seed
from foci.text.styles import StyleLibrary

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.service.worker import Worker


@dataclass
class ApiContext:
    """Everything the endpoints use; built once by :func:`create_app` and stored on ``app.state.foci``."""

    store: JobStore
    worker: Worker | None
    bus: EventBus
    engine: Engine
    settings: FociSettings
    auth: AuthConfig
    output_dir: Path
    max_upload_bytes: int
    root: Path
    styles: StyleLibrary = field(init=False)
    event_poll_seconds: float = 2.0
    keepalive_seconds: float = 15.0
    closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.styles = StyleLibrary.load(tuple(self.engine.styles_dirs))

    def workers_info(self) -> list[WorkerInfo]:
        """The workers' reports, when the worker (pool) gives them."""
        report = getattr(self.worker, "workers_info", None)
        return list(report()) if callable(report) else []

    def close_streams(self) -> None:
        """End every open event stream within ``event_poll_seconds`` (call before stopping the server, whose
        graceful shutdown otherwise waits for streams of jobs that have not ended)."""
        self.closing.set()

    @property
    def inputs(self) -> InputImageStore:
        """The engine's store of input images and masks (what ``task.input_image``/``inpaint_mask`` name)."""
        return self.engine.inputs

    # --- tasks
    def build_task(self, fields: dict[str, Any], base: dict[str, Any], *,
                   arriving: Collection[str] = ()) -> GenerationTask:
        """``fields`` merged over ``base`` as a validated, admitted task; HTTP 422 with the message otherwise.
        Input images it names must be stored already or among ``arriving`` (stored with the job)."""
        values = {**base, **fields}
        if values.get("seed") is None:
            values["seed"] = random_seed()
        try:
            task = GenerationTask(**values)
        except ValidationError as error:
            raise HTTPException(422, validation_message(error, "task")) from None
        except ValueError as error:
            raise HTTPException(422, f"task: {error}") from None
        try:
            admit(task, styles=self.styles, max_image_number=self.settings.default_max_image_number,
                  inputs=self.inputs, arriving=arriving)
        except AdmissionError as error:
            raise HTTPException(422, f"task.{error}") from None
        return task

    def job(self, job_id: str) -> Job:
        """The job, or 404."""
        try:
            return self.store.get(job_id)
        except UnknownJobError as error:
            raise HTTPException(404, str(error)) from None

    def change(self, job_id: str, action: Any, *args: Any, **kwargs: Any) -> Job:
        """Run a store operation on an existing job; 404 for an unknown job, 409 for an illegal transition."""
        try:
            return action(job_id, *args, **kwargs)
        except UnknownJobError as error:
            raise HTTPException(404, str(error)) from None
        except JobError as error:
            raise HTTPException(409, str(error)) from None

    def publish(self, job: Job, kind: EventKind) -> None:
        """Tell event-stream readers about a change the API made itself (the worker reports the rest)."""
        self.bus.publish(JobEvent.for_job(job, kind))

    def model_names(self, kind: str) -> list[str]:
        hidden = performance_lora_names() if kind == "loras" else frozenset()
        return [path.as_posix() for path in self.engine.folders.list_files(kind) if path.name not in hidden]

    # --- jobs with input images (called in a worker thread: images are decoded and written)
    def submit(self, job_request: JobRequest) -> Job:
        """Queue a ``POST /v1/jobs`` request: its images are stored before the job is queued (so a queued job
        survives a restart with them); nothing is stored or queued when anything is refused."""
        submission: JobSubmission = job_request.body
        images = incoming_images(job_request)
        fields = with_image_hashes(submission.task.model_dump(exclude_unset=True), images)
        task = self.build_task(fields, self.settings.task_defaults(), arriving={image.digest for image in images})
        if submission.webhook_url is not None:
            try:
                check_webhook_target(submission.webhook_url, self.settings.webhook_allow)
            except WebhookError as error:
                raise HTTPException(422, str(error)) from None
        store_images(self.inputs, images)
        try:
            job = self.store.submit(task, priority=submission.priority, webhook_url=submission.webhook_url)
        except JobError as error:
            raise HTTPException(422, str(error)) from None
        self.publish(job, "queued")
        if self.worker is not None:
            self.worker.wake()
        return job

    def edit(self, job_id: str, job_request: JobRequest) -> Job:
        """Apply a ``PATCH /v1/jobs/{id}`` request to a queued job (new images are stored first)."""
        patch: JobPatch = job_request.body
        images = incoming_images(job_request)
        if patch.task is None and patch.priority is None and not images:
            raise HTTPException(422, "give 'task' fields, 'priority' and/or an input image")
        job = self.job(job_id)
        if job.state != JobState.QUEUED:
            raise HTTPException(409, f"job {job_id} is {job.state.value}; only queued jobs can be edited")
        if patch.task is not None or images:
            fields = patch.task.model_dump(exclude_unset=True) if patch.task is not None else {}
            base = job.task.model_dump(exclude_unset=True) | {"seed": job.task.seed}
            task = self.build_task(with_image_hashes(fields, images), base,
                                   arriving={image.digest for image in images})
            store_images(self.inputs, images)
            job = self.change(job_id, self.store.update_task, task)
        if patch.priority is not None:
            job = self.change(job_id, self.store.set_priority, patch.priority)
        return job

    def store_input(self, data: bytes) -> tuple[InputImageInfo, bool]:
        """Keep an uploaded image (``POST /v1/inputs``): its description and whether it is new to the store."""
        digest = image_digest(data)
        new = self.inputs.find(digest) is None
        store_images(self.inputs, [IncomingImage("input_image", "the upload", data)])
        with self.inputs.open(digest) as image:
            info = InputImageInfo(sha256=digest, format=image.format or "", width=image.width,
                                  height=image.height, bytes=len(data))
        return info, new
