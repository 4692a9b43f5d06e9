"""The versioned REST API (``/v1``): submit and manage queued jobs, stream their events, fetch images.

Build it with :func:`create_app` and serve it with uvicorn; OpenAPI is at ``/openapi.json`` and ``/docs``.
Everything under ``/v1`` needs credentials when the :class:`~foci.service.auth.AuthConfig` has any.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional
from urllib.parse import unquote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from foci import __version__
from foci.files.input_images import InputImageStore, image_digest
from foci.messages import validation_message
from foci.records.image_input import ImageInputError, ImageTooLargeError, NotAnImageError
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.admission import INPUT_IMAGE_FIELDS, AdmissionError, admit
from foci.service.auth import AuthConfig
from foci.service.events import EventBus, EventKind, JobEvent, Subscription
from foci.service.jobs import FINAL_STATES, Job, JobError, JobImage, JobState, JobStore, UnknownJobError, WorkerInfo
from foci.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from foci.service.metrics import render_metrics
from foci.service.webhooks import WebhookError, check_webhook_target, validate_webhook_url
from foci.settings.aspect_ratios import aspect_label
from foci.settings.config import FociSettings, available_presets
from foci.settings.performance import performance_lora_names
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask, parse_size, random_seed
from foci.text.styles import StyleLibrary

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.service.worker import Worker

API_PREFIX = "/v1"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_MULTIPART_OVERHEAD = 64 << 10  # form boundaries and part headers around an uploaded file
BASE64_FIELDS: Mapping[str, str] = {field: f"{field}_base64" for field in INPUT_IMAGE_FIELDS}
"""Task field naming an input image by hash → the job body field that may carry that image as base64."""


# The API reference at /docs, rendered in the browser from /openapi.json with no external scripts or fonts
# (FastAPI's Swagger UI loads from a CDN, which an offline machine cannot reach).
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Foci API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1em 1.5em;color:#222}
h1{margin-bottom:.2em} .op{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.5em .8em}
.m{display:inline-block;min-width:4.2em;font-weight:700;text-transform:uppercase;font-size:.85em}
.get{color:#0a7} .post{color:#06c} .patch{color:#a60} .delete{color:#c22} code{background:#f4f4f4;padding:0 .25em}
table{border-collapse:collapse;margin:.3em 0} td,th{border-bottom:1px solid #eee;padding:.15em .6em;text-align:left;
vertical-align:top} .muted{color:#777} details{margin:.3em 0}
</style></head><body><h1>Foci API</h1><p id="intro" class="muted">Loading /openapi.json …</p><div id="ops"></div>
<h2>Schemas</h2><div id="schemas"></div>
<script>
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; };
const typeOf = s => !s ? "" : s.$ref ? s.$ref.split("/").pop() : s.anyOf ? s.anyOf.map(typeOf).join(" | ")
  : s.type === "array" ? typeOf(s.items) + "[]" : s.enum ? s.enum.map(v => JSON.stringify(v)).join(" | ")
  : (s.type || "object");
function table(rows, head) { const t = el("table"); const h = el("tr");
  head.forEach(x => h.appendChild(el("th", x))); t.appendChild(h);
  rows.forEach(r => { const tr = el("tr"); r.forEach(x => tr.appendChild(el("td", x))); t.appendChild(tr); });
  return t; }
fetch("openapi.json").then(r => r.json()).then(api => {
  document.getElementById("intro").textContent = (api.info.description || "") + " Version " + api.info.version
    + ". Machine-readable schema: /openapi.json.";
  const ops = document.getElementById("ops");
  for (const [path, methods] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("div", undefined, "op"); const line = el("div");
      line.appendChild(el("span", method, "m " + method)); line.appendChild(el("code", path));
      line.appendChild(el("span", "  " + (op.summary || ""))); box.appendChild(line);
      if (op.parameters && op.parameters.length) box.appendChild(table(op.parameters.map(p =>
        [p.name, p.in, typeOf(p.schema), p.required ? "required" : "", p.description || ""]),
        ["parameter", "in", "type", "", ""]));
      if (op.requestBody) box.appendChild(el("div", "body: " + Object.entries(op.requestBody.content).map(
        ([mime, c]) => mime + " " + typeOf(c.schema)).join(", "), "muted"));
      box.appendChild(el("div", "responses: " + Object.entries(op.responses).map(([code, r]) =>
        code + " " + (r.description || "")).join(" · "), "muted"));
      ops.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((api.components || {}).schemas || {})) {
    const d = el("details"); d.appendChild(el("summary", name + (schema.description ? " — " + schema.description
      : ""))); const req = new Set(schema.required || []);
    d.appendChild(table(Object.entries(schema.properties || {}).map(([k, v]) =>
      [k, typeOf(v), req.has(k) ? "required" : "", v.description || ""]), ["field", "type", "", ""]));
    schemas.appendChild(d);
  }
}).catch(e => { document.getElementById("intro").textContent = "Could not load /openapi.json: " + e; });
</script></body></html>
"""


# ------------------------------------------------------------------------------------------------ models
def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model`` with every field optional and unset by default (for partial updates)."""
    fields: dict[str, Any] = {
        key: (Optional[info.annotation], Field(None, description=info.description))  # noqa: UP045 - runtime type
        for key, info in model.model_fields.items()
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


TaskFields = _partial(GenerationTask, "TaskFields")
TaskFields.__doc__ = "Any subset of GenerationTask's fields; the rest come from the server's preset/config."


_BASE64_HELP = ("the {what} as base64 (or a data: URL, e.g. data:image/png;base64,…); stored by its SHA-256, "
                "which becomes task.{field}. Larger files: send the job as multipart/form-data with a file part "
                "'{field}'")


def _base64_field(what: str, field_name: str) -> Any:
    return Field(None, description=_BASE64_HELP.format(what=what, field=field_name))


class JobSubmission(BaseModel):
    """``POST /v1/jobs``: the task fields to set, a queue priority, an optional webhook and the input images.

    The input image and mask come as base64 here, as file parts of a multipart request, or as ``task.input_image``
    / ``task.inpaint_mask`` hashes of images already stored (``POST /v1/inputs``, or an earlier job's)."""

    model_config = ConfigDict(extra="forbid")
    task: TaskFields = Field(default_factory=TaskFields)  # type: ignore[valid-type]
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher runs first; FIFO within a priority")
    webhook_url: str | None = Field(None, description="http(s) URL that receives the job JSON when it ends")
    input_image_base64: str | None = _base64_field("input image", "input_image")
    inpaint_mask_base64: str | None = _base64_field("inpaint mask (white = repaint)", "inpaint_mask")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else validate_webhook_url(value)


class JobPatch(BaseModel):
    """``PATCH /v1/jobs/{id}``: task fields to change (queued jobs only), a new priority and/or new input images
    (base64 here or file parts of a multipart request, as for ``POST /v1/jobs``)."""

    model_config = ConfigDict(extra="forbid")
    task: TaskFields | None = None  # type: ignore[valid-type]
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    input_image_base64: str | None = _base64_field("new input image", "input_image")
    inpaint_mask_base64: str | None = _base64_field("new inpaint mask", "inpaint_mask")


class MoveRequest(BaseModel):
    """``POST /v1/jobs/{id}/move``: exactly one of ``before`` (a queued job id), ``to_front`` or ``to_back``."""

    model_config = ConfigDict(extra="forbid")
    before: str | None = None
    to_front: bool = False
    to_back: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> MoveRequest:
        if (self.before is not None) + self.to_front + self.to_back != 1:
            raise ValueError("give exactly one of 'before', 'to_front': true or 'to_back': true")
        return self


class AspectRatio(BaseModel):
    """One selectable size."""

    value: str
    label: str
    width: int
    height: int


class AspectRatios(BaseModel):
    aspect_ratios: list[AspectRatio]
    default: str


class Choices(BaseModel):
    """Names to choose from and the configured default."""

    names: list[str]
    default: str


class StyleInfo(BaseModel):
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    special: bool = False


class Styles(BaseModel):
    styles: list[StyleInfo]
    default: list[str]


class Presets(BaseModel):
    presets: list[str]


class Models(BaseModel):
    checkpoints: list[str]
    loras: list[str]
    vae: list[str]
    default_model: str


class Health(BaseModel):
    status: str
    version: str
    worker: str
    queued: int
    running: int
    auth: bool
    queue_depth: int = Field(0, description="queued jobs (the same as queued)")
    workers: list[WorkerInfo] = Field(default_factory=list, description="each worker, its state and loaded models")


class MetadataResult(BaseModel):
    """The task an image's embedded metadata encodes."""

    scheme: str
    task: GenerationTask
    raw: dict[str, Any] | str


class InputImageInfo(BaseModel):
    """An image in the input store: ``sha256`` is what ``task.input_image`` and ``task.inpaint_mask`` take."""

    sha256: str
    format: str
    width: int
    height: int
    bytes: int


class ErrorBody(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong credentials"},
    422: {"model": ErrorBody, "description": "invalid input"},
}
_NOT_FOUND = {404: {"model": ErrorBody, "description": "no such job"}}
_CONFLICT = {409: {"model": ErrorBody, "description": "not possible in the job's current state"}}
_IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "body, image file or pixel count too large"},
    415: {"model": ErrorBody, "description": "an upload that is not an image (or a body that is neither JSON nor "
                                            "multipart/form-data)"},
}


# ------------------------------------------------------------------------------------------------ helpers
def _error_items(error: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", "")),
             "type": str(item.get("type", ""))} for item in error.errors()]


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


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it exceeds ``limit`` bytes (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def _read_form(request: Request, max_bytes: int) -> dict[str, bytes | str]:
    """The parts of a multipart body of at most ``max_bytes`` (plus framing): file parts as bytes, text parts as
    str; 422 for a part given twice."""
    body = await _read_limited(request, max_bytes + _MULTIPART_OVERHEAD)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form()
    try:
        parts: dict[str, bytes | str] = {}
        for name, value in form.multi_items():
            if name in parts:
                raise HTTPException(422, f"the form part {name!r} is given twice")
            parts[name] = value if isinstance(value, str) else await value.read()
        return parts
    finally:
        await form.close()


async def _uploaded_file(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a multipart ``file`` field or of a raw ``image/*`` body, at most ``max_bytes``."""
    if _is_multipart(request):
        data = (await _read_form(request, max_bytes)).get("file")  # type: ignore[assignment]
        if not isinstance(data, bytes):
            raise HTTPException(422, "send the image as the multipart field 'file'")
    else:
        data = await _read_limited(request, max_bytes)
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    if not data:
        raise HTTPException(422, "the upload is empty")
    return data


# ------------------------------------------------------------------------------------------------ job bodies
@dataclass
class JobRequest:
    """A parsed job body (``POST`` or ``PATCH``) and the input image files that came with it, by task field."""

    body: Any  # JobSubmission or JobPatch
    files: dict[str, bytes]


async def read_job_request(request: Request, model: type[BaseModel], max_upload_bytes: int) -> JobRequest:
    """The job of an ``application/json`` body, or of a ``multipart/form-data`` body whose part ``job`` holds the
    same JSON and whose file parts ``input_image`` / ``inpaint_mask`` hold the images; 415 for other bodies."""
    content_type = request.headers.get("content-type", "").lower()
    if _is_multipart(request):
        parts = await _read_form(request, max_upload_bytes)
        unknown = sorted(set(parts) - {"job", *INPUT_IMAGE_FIELDS})
        if unknown:
            raise HTTPException(422, f"unknown form part {unknown[0]!r}: send the job JSON as the part 'job' and the "
                                     f"images as the file parts {' and '.join(map(repr, INPUT_IMAGE_FIELDS))}")
        files: dict[str, bytes] = {}
        for field_name in INPUT_IMAGE_FIELDS:
            value = parts.get(field_name)
            if isinstance(value, str):
                raise HTTPException(422, f"{field_name}: send the image as a file part (curl -F "
                                         f"{field_name}=@image.png)")
            if value is not None:
                files[field_name] = value
        if sum(map(len, files.values())) > max_upload_bytes:
            raise HTTPException(413, f"uploaded images larger than {max_upload_bytes} bytes in all")
        return JobRequest(parse_job_json(parts.get("job", b"{}"), model), files)
    if content_type and "json" not in content_type:
        raise HTTPException(415, "send the job as application/json, or as multipart/form-data with the job JSON in "
                                 "the part 'job' and the images as file parts")
    return JobRequest(parse_job_json(await request.body(), model), {})


def parse_job_json(raw: bytes | str, model: type[BaseModel]) -> Any:
    """``raw`` (JSON) validated as ``model``; 422 in the API's usual form otherwise."""
    if not raw.strip():
        raise RequestValidationError([{"loc": ("body",), "msg": "the job JSON is missing", "type": "missing"}])
    try:
        value = json.loads(raw)
    except ValueError as error:  # also invalid UTF-8
        raise RequestValidationError([{"loc": ("body",), "msg": f"not valid JSON: {error}",
                                       "type": "json_invalid"}]) from None
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None


_DATA_URL = re.compile(r"^data:[^,]*?(;base64)?,", re.IGNORECASE)


def decode_base64_image(text: str, source: str) -> bytes:
    """The bytes of a base64 text or ``data:`` URL (standard or URL-safe alphabet, whitespace and missing padding
    tolerated); 422 naming ``source`` for anything else."""
    payload = text.strip()
    data_url = _DATA_URL.match(payload)
    if data_url is not None:
        if data_url.group(1) is None:
            raise HTTPException(422, f"{source}: a data: URL must be base64 (data:image/png;base64,…)")
        payload = payload[data_url.end():]
    payload = re.sub(r"\s+", "", payload).translate(str.maketrans("-_", "+/"))
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{source}: not valid base64 (nor a data: URL)") from None
    if not data:
        raise HTTPException(422, f"{source}: the image is empty")
    return data


@dataclass(frozen=True)
class IncomingImage:
    """An input image or mask that arrives with a job: its bytes, where it came from and its hash."""

    field: str  # the task field it sets: input_image or inpaint_mask
    source: str  # how the client sent it, for messages: input_image, input_image_base64, …
    data: bytes

    @property
    def digest(self) -> str:
        return image_digest(self.data)


def incoming_images(job: JobRequest) -> list[IncomingImage]:
    """The images of a job request, from its file parts and base64 fields; 422 when one is given twice."""
    images = []
    for field_name, base64_name in BASE64_FIELDS.items():
        text = getattr(job.body, base64_name)
        data = job.files.get(field_name)
        if text is not None and data is not None:
            raise HTTPException(422, f"{field_name}: give the image once, as the file part or as {base64_name}")
        if data is not None:
            images.append(IncomingImage(field_name, field_name, data))
        elif text is not None:
            images.append(IncomingImage(field_name, base64_name, decode_base64_image(text, base64_name)))
    return images


def with_image_hashes(fields: dict[str, Any], images: Sequence[IncomingImage]) -> dict[str, Any]:
    """Task ``fields`` naming each incoming image by its hash; 422 when the task names another one already."""
    fields = dict(fields)
    for image in images:
        named = fields.get(image.field)
        if named is not None and named != image.digest:
            raise HTTPException(422, f"task.{image.field}: {named} is not the hash of the {image.source} sent "
                                     "with the job; give one of them")
        fields[image.field] = image.digest
    return fields


def image_error(error: ImageInputError) -> HTTPException:
    """The HTTP error for an input image Foci does not take: 413 too large, 415 not an image, 422 damaged."""
    status = 413 if isinstance(error, ImageTooLargeError) else 415 if isinstance(error, NotAnImageError) else 422
    return HTTPException(status, str(error))


def store_images(inputs: InputImageStore, images: Sequence[IncomingImage]) -> None:
    """Keep every image in the input store (checked there); the HTTP error of the first that is refused."""
    for image in images:
        try:
            inputs.put_bytes(image.data, what=image.source)
        except ImageInputError as error:
            raise image_error(error) from None


def _job_body_docs(model: type[BaseModel], what: str) -> dict[str, Any]:
    """OpenAPI request body of a job route: the model as JSON, or multipart with the JSON and the image files."""
    image_parts = {name: {"type": "string", "format": "binary", "description": f"the {name.replace('_', ' ')} "
                          "file (sets task." + name + ")"} for name in INPUT_IMAGE_FIELDS}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "job": {"type": "string", "description": f"{what} as JSON ({model.__name__})"}, **image_parts}}}}}}


def _with_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` (read by hand from the request, so FastAPI does not see them) to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in model_schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


# ------------------------------------------------------------------------------------------------ body size
_UPLOAD_TYPES = ("multipart/form-data", "image/", "application/octet-stream")


class BodySizeLimit:
    """ASGI middleware for the whole app (API, UI, history): a request body larger than its limit gets 413
    before any route sees it — checked on ``Content-Length`` and while reading a body sent without one.

    Uploads (multipart, ``image/*``, octet-stream) may be ``upload_bytes`` long, everything else (JSON, forms)
    ``other_bytes``. The body is read (at most the limit) before the route runs, then handed on unchanged.
    """

    def __init__(self, app: Any, *, upload_bytes: int, other_bytes: int) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.other_bytes = other_bytes

    def limit_for(self, content_type: str) -> int:
        """The body limit for a request of this ``Content-Type``."""
        lowered = content_type.strip().lower()
        return self.upload_bytes if lowered.startswith(_UPLOAD_TYPES) else self.other_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        limit = self.limit_for(headers.get("content-type", ""))
        hint = "" if limit == self.upload_bytes else "; send large images as multipart/form-data file parts"
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit, hint)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit, hint)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int, hint: str = "") -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes{hint}"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------------ the app
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


def _authenticator(auth: AuthConfig) -> Any:
    """A dependency that lets a request through or answers 401 (and documents the three schemes in OpenAPI)."""
    bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
    basic = HTTPBasic(auto_error=False, description="a user and password", realm="foci")

    # Defaults, not Annotated[...]: these schemes are local objects, which postponed annotations cannot name.
    def require_credentials(request: Request, _bearer: Any = Security(bearer),  # noqa: B008
                            _key: Any = Security(api_key), _basic: Any = Security(basic)) -> str:  # noqa: B008
        principal = auth.authenticate(request.headers)
        if principal is None:
            raise HTTPException(401, "missing or invalid credentials",
                                headers={"WWW-Authenticate": 'Bearer realm="foci", Basic realm="foci"'})
        return principal

    def open_access(request: Request) -> str:
        return "anonymous"

    return require_credentials if auth.enabled else open_access


def create_app(*, store: JobStore, worker: Worker | None, bus: EventBus, engine: Engine, settings: FociSettings,
               auth: AuthConfig, output_dir: Path, max_upload_bytes: int = 20 << 20,
               max_json_bytes: int = 1 << 20, root: Path | None = None) -> FastAPI:
    """The FastAPI application. ``root`` is where user presets live (``<root>/presets``; default: cwd).

    Every request body (also the UI's, which is mounted on this app) is capped: uploads at ``max_upload_bytes``
    (plus multipart framing), anything else at ``max_json_bytes``; larger bodies get 413."""
    context = ApiContext(store=store, worker=worker, bus=bus, engine=engine, settings=settings, auth=auth,
                         output_dir=Path(output_dir), max_upload_bytes=max_upload_bytes,
                         root=Path.cwd() if root is None else Path(root))
    app = FastAPI(title="Foci API", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  description="Queue SDXL jobs (Fooocus recipe): text to image, Upscale/Vary and Inpaint/Outpaint "
                              "of an input image; follow them live, fetch the images.")
    app.state.foci = context
    app.add_middleware(BodySizeLimit, upload_bytes=max_upload_bytes + _MULTIPART_OVERHEAD,
                       other_bytes=max_json_bytes)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(error), "errors": _error_items(error)}, status_code=422)

    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(_authenticator(auth))], responses=_ERRORS)
    _add_job_routes(router, context)
    _add_input_routes(router, context)
    _add_info_routes(router, context)
    app.include_router(router)
    _with_schemas(app, [JobSubmission, JobPatch])

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(_authenticator(auth))])
    def metrics() -> PlainTextResponse:
        """Prometheus metrics: jobs by state, workers, model loads, step time, queue wait."""
        text = render_metrics(context.store, context.workers_info())
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)

    return app


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


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


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


__all__: Iterable[str] = ["ApiContext", "BodySizeLimit", "InputImageInfo", "JobPatch", "JobSubmission", "MoveRequest",
                          "TaskFields", "create_app", "decode_base64_image", "image_url", "read_job_request",
                          "replay_events", "safe_image_path", "validation_message"]
