"""The ``/v1`` endpoints: jobs and their event streams, input images, output images, models, presets, styles."""

from __future__ import annotations

import json
import mimetypes
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from foci import __version__
from foci.apps.api.context import ApiContext
from foci.apps.api.docs import _UPLOAD_BODY, _job_body_docs
from foci.apps.api.schemas import (
    _CONFLICT,
    _IMAGE_ERRORS,
    _NOT_FOUND,
    API_PREFIX,
    IMAGE_SUFFIXES,
    AspectRatio,
    AspectRatios,
    Choices,
    ErrorBody,
    Health,
    InputImageInfo,
    JobPatch,
    JobSubmission,
    MetadataResult,
    Models,
    MoveRequest,
    Presets,
    StyleInfo,
    Styles,
)
from foci.apps.api.uploads import _uploaded_file, read_job_request
from foci.messages import validation_message
from foci.records.image_input import ImageTooLargeError
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.events import JobEvent, Subscription
from foci.service.jobs import FINAL_STATES, Job, JobImage, JobState, UnknownJobError
from foci.settings.aspect_ratios import aspect_label
from foci.settings.config import available_presets
from foci.task import SAMPLERS, SCHEDULERS, parse_size


def _sse(event: JobEvent, previews: bool) -> str:
    if not previews and event.preview_png is not None:
        event = event.model_copy(update={"preview_png": None})
    return f"data: {event.model_dump_json()}\n\n"


def replay_events(job: Job) -> list[JobEvent]:
    """Events describing a job's current state, for a client that subscribes late."""
    if job.state == JobState.QUEUED:
        return [JobEvent.for_job(job, "queued", time=job.created_at)]
    if job.state == JobState.RUNNING:
        return [JobEvent.for_job(job, "started", progress=job.progress)]
    ended = job.finished_at or time.time()
    events = [JobEvent.for_job(job, "image", image=image, time=ended) for image in job.images]
    events.append(JobEvent.for_job(job, job.state.value, progress=job.progress, time=ended))
    return events


def safe_image_path(root: Path, requested: str) -> Path:
    """The file under ``root`` that ``requested`` (a relative posix path) names; HTTPException otherwise.

    Rejects ``..`` and ``.`` parts (also percent-encoded, once or twice), absolute and drive paths, backslashes,
    NUL bytes, non-image suffixes and symlinks that lead outside ``root``.
    """
    decoded = requested
    for _ in range(3):  # %2e%2e and %252e%252e both become ..
        decoded = unquote(decoded)
    for text in (requested, decoded):
        if "\\" in text or "\0" in text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
            raise HTTPException(400, "image path must be relative to the output folder, using '/'")
        parts = text.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise HTTPException(400, "image path may not contain '.', '..' or empty parts")
    if "%" in requested:
        raise HTTPException(400, "image path may not contain percent-encoded characters")
    suffix = Path(requested).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise HTTPException(404, f"only {', '.join(IMAGE_SUFFIXES)} images are served")
    base = root.resolve()
    try:
        target = (base / requested).resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, f"no image {requested!r}") from None
    if not target.is_relative_to(base):
        raise HTTPException(403, "image path leads outside the output folder")
    if not target.is_file():
        raise HTTPException(404, f"no image {requested!r}")
    return target


def _parse_states(values: Sequence[str] | None) -> list[JobState] | None:
    if not values:
        return None
    states = []
    for value in values:
        for name in filter(None, (part.strip().lower() for part in value.split(","))):
            try:
                states.append(JobState(name))
            except ValueError:
                choices = ", ".join(state.value for state in JobState)
                raise HTTPException(422, f"state: unknown job state {name!r}; choose from {choices}") from None
    return states or None


def _add_job_routes(router: APIRouter, context: ApiContext) -> None:
    store = context.store

    @router.post("/jobs", status_code=201, response_model=Job, responses=_IMAGE_ERRORS, summary="Queue a job",
                 openapi_extra=_job_body_docs(JobSubmission, "the job"))
    async def submit_job(request: Request) -> JSONResponse:
        """A JSON ``JobSubmission``, or multipart/form-data: the part ``job`` with that JSON and the file parts
        ``input_image`` / ``inpaint_mask``. Input images are stored (by SHA-256) before the job is queued."""
        job_request = await read_job_request(request, JobSubmission, context.max_upload_bytes)
        job = await run_in_threadpool(context.submit, job_request)
        return JSONResponse(json.loads(job.model_dump_json()), status_code=201,
                            headers={"Location": f"{API_PREFIX}/jobs/{job.id}"})

    @router.get("/jobs", response_model=list[Job], summary="List jobs")
    def list_jobs(state: Annotated[list[str] | None, Query(description="filter: repeat or comma-separate states")]
                  = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0)] = 0) -> list[Job]:
        return store.list(states=_parse_states(state), limit=limit, offset=offset)

    @router.get("/jobs/{job_id}", response_model=Job, responses=_NOT_FOUND, summary="One job")
    def get_job(job_id: str) -> Job:
        return context.job(job_id)

    @router.delete("/jobs/{job_id}", response_model=Job, responses={**_NOT_FOUND, **_CONFLICT},
                   summary="Cancel a job (queued: at once; running: stopped by the worker)")
    def cancel_job(job_id: str) -> Job:
        if context.job(job_id).state in FINAL_STATES:
            raise HTTPException(409, f"job {job_id} has already ended")
        job = context.change(job_id, store.cancel)
        if job.state == JobState.CANCELLED:
            context.publish(job, "cancelled")
        return job

    @router.post("/jobs/{job_id}/skip", response_model=Job, responses={**_NOT_FOUND, **_CONFLICT},
                 summary="Abandon the running job's current image and go on with the next")
    def skip_image(job_id: str) -> Job:
        job = context.job(job_id)
        if context.worker is None:
            raise HTTPException(409, "this server runs no worker")
        if job.state != JobState.RUNNING or not context.worker.skip(job_id):
            raise HTTPException(409, f"job {job_id} is not running")
        return context.job(job_id)

    @router.post("/jobs/{job_id}/move", response_model=Job, responses={**_NOT_FOUND, **_CONFLICT},
                 summary="Reorder a queued job")
    def move_job(job_id: str, move: MoveRequest) -> Job:
        if move.before is not None:
            try:
                context.store.get(move.before)
            except UnknownJobError:
                raise HTTPException(422, f"before: no job with id {move.before!r}") from None
        return context.change(job_id, store.move, before=move.before, to_front=move.to_front, to_back=move.to_back)

    @router.patch("/jobs/{job_id}", response_model=Job, responses={**_NOT_FOUND, **_CONFLICT, **_IMAGE_ERRORS},
                  summary="Edit a queued job's task, input images and/or priority",
                  openapi_extra=_job_body_docs(JobPatch, "the changes"))
    async def edit_job(job_id: str, request: Request) -> Job:
        job_request = await read_job_request(request, JobPatch, context.max_upload_bytes)
        return await run_in_threadpool(context.edit, job_id, job_request)

    @router.get("/jobs/{job_id}/events", responses={
        **_NOT_FOUND, 200: {"description": "server-sent events: one JSON JobEvent per `data:` line; the stream "
                                          "starts with the job's current state and ends after its final event",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        response_class=StreamingResponse, summary="Follow a job live (server-sent events)")
    async def job_events(job_id: str, previews: Annotated[bool, Query(description="include live preview PNGs")]
                         = True) -> StreamingResponse:
        subscription = context.bus.subscribe(job_id)
        try:
            job = await run_in_threadpool(context.job, job_id)
        except BaseException:
            subscription.close()
            raise
        return StreamingResponse(_event_stream(context, job, subscription, previews), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(context: ApiContext, job: Job, subscription: Subscription,
                        previews: bool) -> AsyncIterator[str]:
    """Replay the job's state, then relay bus events until its final one (checking the store while idle)."""
    try:
        for event in replay_events(job):
            yield _sse(event, previews)
        if job.state in FINAL_STATES:
            return
        idle = 0.0
        while True:
            event = await subscription.aget(timeout=context.event_poll_seconds)
            if context.closing.is_set():
                return
            if event is None:
                if subscription.closed:
                    return
                current = await run_in_threadpool(context.store.get, job.id)
                if current.state in FINAL_STATES:  # its final event was missed: say how it ended
                    for replayed in replay_events(current):
                        yield _sse(replayed, previews)
                    return
                idle += context.event_poll_seconds
                if idle >= context.keepalive_seconds:
                    idle = 0.0
                    yield ": keepalive\n\n"
                continue
            idle = 0.0
            yield _sse(event, previews)
            if event.final:
                return
    finally:
        subscription.close()


def _add_input_routes(router: APIRouter, context: ApiContext) -> None:
    @router.post("/inputs", status_code=201, response_model=InputImageInfo, openapi_extra=_UPLOAD_BODY,
                 responses={200: {"model": InputImageInfo, "description": "the image was stored already"},
                            **_IMAGE_ERRORS}, summary="Store an input image or mask; returns its hash for a task")
    async def upload_input(request: Request) -> JSONResponse:
        data = await _uploaded_file(request, context.max_upload_bytes)
        info, new = await run_in_threadpool(context.store_input, data)
        return JSONResponse(info.model_dump(), status_code=201 if new else 200,
                            headers={"Location": f"{API_PREFIX}/inputs/{info.sha256}"})

    @router.get("/inputs/{sha256}", response_class=FileResponse, summary="A stored input image or mask",
                responses={200: {"content": {"image/*": {}}, "description": "the file as it was uploaded"},
                           404: {"model": ErrorBody, "description": "no such input image"}})
    def get_input(sha256: str) -> FileResponse:
        found = context.inputs.find(sha256)
        if found is None:
            raise HTTPException(404, f"no input image {sha256!r} is stored")
        return FileResponse(found, media_type=mimetypes.guess_type(found.name)[0] or "application/octet-stream")


def _add_info_routes(router: APIRouter, context: ApiContext) -> None:
    settings = context.settings

    @router.get("/images/{path:path}", response_class=FileResponse, summary="An image from the output folder",
                responses={200: {"content": {mime: {} for mime in sorted(set(IMAGE_SUFFIXES.values()))},
                                 "description": "the image file, with its embedded metadata"},
                           400: {"model": ErrorBody, "description": "a path that is not plainly relative"},
                           403: {"model": ErrorBody, "description": "a path leading outside the output folder"},
                           404: {"model": ErrorBody, "description": "no such image"}})
    def get_image(path: str) -> FileResponse:
        target = safe_image_path(context.output_dir, path)
        return FileResponse(target, media_type=IMAGE_SUFFIXES[target.suffix.lower()])

    @router.get("/models", response_model=Models, summary="Checkpoints, LoRAs and VAEs found in the model folders")
    def list_models() -> Models:
        return Models(checkpoints=context.model_names("checkpoints"), loras=context.model_names("loras"),
                      vae=context.model_names("vae"), default_model=settings.effective_default_model())

    @router.get("/styles", response_model=Styles, summary="Style names with their templates")
    def list_styles() -> Styles:
        library = context.styles
        templates = set(library.template_names())
        infos = []
        for name in library.names():
            if name in templates:
                style = library.get(name)
                infos.append(StyleInfo(name=name, prompt=style.prompt, negative_prompt=style.negative_prompt))
            else:
                infos.append(StyleInfo(name=name, special=True))
        return Styles(styles=infos, default=list(settings.default_styles))

    @router.get("/presets", response_model=Presets, summary="Shipped and user preset names")
    def list_presets() -> Presets:
        return Presets(presets=available_presets(context.root))

    @router.get("/aspect-ratios", response_model=AspectRatios, summary="Sizes offered by the configuration")
    def list_aspect_ratios() -> AspectRatios:
        ratios = []
        for value in settings.available_aspect_ratios:
            width, height = parse_size(value)
            ratios.append(AspectRatio(value=value, label=aspect_label(value), width=width, height=height))
        return AspectRatios(aspect_ratios=ratios, default=settings.default_aspect_ratio)

    @router.get("/samplers", response_model=Choices, summary="Sampler names")
    def list_samplers() -> Choices:
        return Choices(names=list(SAMPLERS), default=settings.default_sampler)

    @router.get("/schedulers", response_model=Choices, summary="Scheduler names")
    def list_schedulers() -> Choices:
        return Choices(names=list(SCHEDULERS), default=settings.default_scheduler)

    @router.get("/health", response_model=Health, summary="Liveness, queue size and worker state")
    def health() -> Health:
        worker = context.worker
        worker_state = "none" if worker is None else "running" if worker.alive else "stopped"
        queued = context.store.count(states=[JobState.QUEUED])
        running = context.store.count(states=[JobState.RUNNING])
        return Health(status="ok", version=__version__, worker=worker_state, queued=queued, running=running,
                      auth=context.auth.enabled, queue_depth=queued, workers=context.workers_info())

    @router.post("/metadata", response_model=MetadataResult, summary="The task an image's metadata encodes",
                 responses={413: {"model": ErrorBody, "description": "upload too large"}},
                 openapi_extra=_UPLOAD_BODY)
    async def read_image_metadata(request: Request) -> MetadataResult:
        data = await _uploaded_file(request, context.max_upload_bytes)
        return await run_in_threadpool(_metadata_of, context, data)


def _metadata_of(context: ApiContext, data: bytes) -> MetadataResult:
    with tempfile.TemporaryDirectory(prefix="foci-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            found = read_metadata(path)
        except ImageTooLargeError as error:
            raise HTTPException(413, str(error).replace(str(path), "the upload")) from None
        except (ValueError, OSError):
            raise HTTPException(422, "the upload is not an image file Foci can read") from None
    if found is None:
        raise HTTPException(422, "the image carries no generation metadata")
    scheme, payload = found
    try:
        task = task_from_metadata(payload, scheme, model_files=context.model_names("checkpoints"),
                                  lora_files=context.model_names("loras"), vae_files=context.model_names("vae"),
                                  style_library=context.styles)
    except ValidationError as error:
        raise HTTPException(422, f"metadata: {validation_message(error)}") from None
    except ValueError as error:
        raise HTTPException(422, f"metadata: {error}") from None
    return MetadataResult(scheme=scheme, task=task, raw=payload)


def image_url(image: JobImage) -> str:
    """The API path of a job image."""
    return f"{API_PREFIX}/images/{image.path}"
