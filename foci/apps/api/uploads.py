"""Reading request bodies: job JSON or multipart with image files, base64 images, raw uploads, size limits."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from foci.apps.api.schemas import BASE64_FIELDS
from foci.files.input_images import InputImageStore, image_digest
from foci.records.image_input import ImageInputError, ImageTooLargeError, NotAnImageError
from foci.service.admission import INPUT_IMAGE_FIELDS

_MULTIPART_OVERHEAD = 64 << 10  # form boundaries and part headers around an uploaded file


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
