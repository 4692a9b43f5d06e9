"""The app factory: authentication, the body size limit, validation errors, the routers and ``/metrics``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBearer
from pydantic import ValidationError

from foci import __version__
from foci.apps.api.context import ApiContext
from foci.apps.api.docs import DOCS_PAGE, _with_schemas
from foci.apps.api.routes import _add_info_routes, _add_input_routes, _add_job_routes
from foci.apps.api.schemas import _ERRORS, API_PREFIX, JobPatch, JobSubmission
from foci.apps.api.uploads import _MULTIPART_OVERHEAD
from foci.messages import validation_message
from foci.service.auth import AuthConfig
from foci.service.events import EventBus
from foci.service.jobs import JobStore
from foci.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from foci.service.metrics import render_metrics
from foci.settings.config import FociSettings

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.service.worker import Worker


def _error_items(error: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", "")),
             "type": str(item.get("type", ""))} for item in error.errors()]


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
