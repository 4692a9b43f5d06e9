"""The API's request and response bodies, its path prefix and the documented error responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from foci.service.admission import INPUT_IMAGE_FIELDS
from foci.service.jobs import WorkerInfo
from foci.service.webhooks import validate_webhook_url
from foci.task import GenerationTask

API_PREFIX = "/v1"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


BASE64_FIELDS: Mapping[str, str] = {field: f"{field}_base64" for field in INPUT_IMAGE_FIELDS}
"""Task field naming an input image by hash → the job body field that may carry that image as base64."""


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
