"""The versioned REST API (``/v1``): submit and manage queued jobs, stream their events, fetch images.

Build it with :func:`create_app` and serve it with uvicorn; OpenAPI is at ``/openapi.json`` and ``/docs``.
Everything under ``/v1`` needs credentials when the :class:`~foci.service.auth.AuthConfig` has any.

The package: ``schemas`` (request and response bodies), ``uploads`` (reading job bodies and input images),
``context`` (the state and job operations the endpoints share), ``routes`` (the endpoints), ``docs`` (the
offline ``/docs`` page and hand-written OpenAPI parts) and ``app`` (the factory, authentication, body limits).
"""

from __future__ import annotations

from collections.abc import Iterable

from foci.apps.api.app import BodySizeLimit, create_app
from foci.apps.api.context import ApiContext
from foci.apps.api.docs import DOCS_PAGE
from foci.apps.api.routes import image_url, replay_events, safe_image_path
from foci.apps.api.schemas import (
    API_PREFIX,
    BASE64_FIELDS,
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
    TaskFields,
)
from foci.apps.api.uploads import (
    IncomingImage,
    JobRequest,
    decode_base64_image,
    image_error,
    incoming_images,
    parse_job_json,
    read_job_request,
    store_images,
    with_image_hashes,
)
from foci.messages import validation_message

__all__: Iterable[str] = [
    "API_PREFIX", "BASE64_FIELDS", "DOCS_PAGE", "IMAGE_SUFFIXES", "ApiContext", "AspectRatio", "AspectRatios",
    "BodySizeLimit", "Choices", "ErrorBody", "Health", "IncomingImage", "InputImageInfo", "JobPatch", "JobRequest",
    "JobSubmission", "MetadataResult", "Models", "MoveRequest", "Presets", "StyleInfo", "Styles", "TaskFields",
    "create_app", "decode_base64_image", "image_error", "image_url", "incoming_images", "parse_job_json",
    "read_job_request", "replay_events", "safe_image_path", "store_images", "validation_message",
    "with_image_hashes",
]
