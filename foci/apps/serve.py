"""The Foci service: one app with the REST API (``/v1``, ``/docs``), the web UI (``/``) and ``/history``,
sharing one job store, event bus and worker. ``foci`` (no arguments) or ``foci serve`` runs it.

With credentials configured, one guard in front of the whole app checks every HTTP request and websocket the same
way (``Authorization: Bearer <key>``, ``X-API-Key: <key>``, ``Authorization: Basic <user:password>`` or
``<any name:key>``); only the API reference (``/docs``, ``/openapi.json``) is public. A browser gets the standard
HTTP login prompt."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from foci.apps.api import create_app
from foci.apps.webui import build_ui, mount_ui
from foci.engine.engine import Engine
from foci.files.download_hints import startup_download_report
from foci.files.downloads import PRESETS, CatalogueEntry, load_catalogue, required_files
from foci.service.auth import DEFAULT_AUTH_FILE, AuthConfig
from foci.service.events import EventBus
from foci.service.pool import WorkerPool
from foci.service.queue import JobQueue, open_queue
from foci.service.webhooks import WebhookDispatcher
from foci.service.worker import Worker
from foci.settings.config import FociSettings

_log = logging.getLogger(__name__)
DEFAULT_PORT = 7865
JOBS_FILE = "jobs.sqlite3"
PUBLIC_PATHS = frozenset({"/docs", "/openapi.json"})


def quiet_environment() -> None:
    """No analytics or hub calls from Gradio/huggingface_hub (stack notes §6); Foci downloads by itself."""
    for name, value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                        ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(name, value)


@dataclass
class Service:
    """Everything a running server owns; ``close()`` stops the worker before the store."""

    app: FastAPI
    store: JobQueue
    bus: EventBus
    worker: Any  # WorkerPool, or RayWorkerPool with --ray
    engines: list[Engine]
    webhooks: WebhookDispatcher

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        """End open event streams, stop the worker (its job goes back to the queue), then webhooks and store."""
        self.app.state.foci.close_streams()
        self.worker.stop()
        self.webhooks.close()
        self.store.close()


@dataclass(frozen=True)
class ScaleOptions:
    """``--queue``/``--ray``: where the queue lives and whether the workers run on a Ray cluster."""

    queue: str | None = None  # postgresql://… or a SQLite file (default <root>/jobs.sqlite3)
    ray_address: str | None = None  # None: in-process workers (the embedded default); "auto" or HOST:PORT
    ray_cpu_workers: int | None = None  # CPU worker actors on a cluster without GPUs (default: one per CPU)


class EngineCopy:
    """What a Ray actor builds its engine from: the configured engine's settings (folders, output folder,
    device, precision, VRAM policy, catalogue, download mirrors), picklable — an engine itself is not."""

    def __init__(self, engine: Engine) -> None:
        self.fields = {name: getattr(engine, name) for name in (
            "models_dir", "output_dir", "device", "precision", "folders", "styles_dirs", "wildcards_dirs",
            "catalogue", "vram", "cache_budget_bytes", "accept_paths", "input_dir")}
        downloader = engine.downloader
        self.download = None if downloader is None else {"offline": downloader.offline,
                                                         "mirrors": dict(downloader.mirrors)}

    def __call__(self) -> Engine:
        from foci.files.downloads import Downloader

        downloader = Downloader(**self.download) if self.download is not None else None
        return Engine(downloader=downloader, **self.fields)


def startup_files(settings: FociSettings, preset: str | None,
                  catalogue: Mapping[str, CatalogueEntry] | None = None) -> list[str]:
    """Catalogue names to fetch before serving, like Fooocus's launcher: what ``preset`` needs (checkpoint,
    LoRAs, expansion, previews) plus the configured default checkpoint, refiner, VAE and LoRAs the catalogue
    knows. A present ``previous_default_models`` entry stands in for a missing default checkpoint (§1.12)."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    names = required_files(preset, catalogue=catalogue) if preset in PRESETS else []
    by_file = {entry.file_name: name for name, entry in catalogue.items()}
    wanted = [settings.default_model, settings.default_refiner, settings.default_vae,
              *(slot.name for slot in settings.default_loras if slot.enabled)]
    for file_name in wanted:
        name = by_file.get(file_name or "", file_name if file_name in catalogue else None)
        if name is not None and name not in names:
            names.append(name)
    if settings.effective_default_model() != settings.default_model:
        names = [name for name in names if catalogue[name].folder != "checkpoints"
                 or catalogue[name].file_name != settings.default_model]
    return names


def predownload(engine: Engine, names: Sequence[str]) -> str | None:
    """Fetch every missing file of ``names`` (a failure does not stop the others); None when all are in place,
    else one report of every failure with what to do."""
    if engine.downloader is None:
        return None
    failures = engine.downloader.fetch_missing(names, engine.folders, engine.catalogue)
    return startup_download_report(failures, offline=engine.downloader.offline) if failures else None


def build_service(*, settings: FociSettings, engines: Sequence[Engine], root: Path, listen_host: str = "127.0.0.1",
                  auth_file: Path | None = None, jobs_file: Path | None = None,
                  ui_defaults: Mapping[str, Any] | None = None, preset: str | None = "default",
                  scale: ScaleOptions | None = None) -> Service:
    """Wire store, workers (one per engine, i.e. per device), API and UI together (workers not started yet).

    Credentials come from ``auth_file`` (default ``<root>/auth.json`` when it exists); listening beyond loopback
    without any raises :class:`foci.service.auth.AuthError`. Jobs still running at a crash are re-queued.
    ``preset`` is the name the UI's Preset dropdown shows selected (the one the settings were loaded with).
    """
    quiet_environment()
    for engine in engines:  # clients name models inside the model folders, never paths on this machine
        engine.accept_paths = False
    if auth_file is None and (root / DEFAULT_AUTH_FILE).is_file():
        auth_file = root / DEFAULT_AUTH_FILE
    auth = AuthConfig.load(auth_file, listen_host=listen_host)
    scale = scale or ScaleOptions()
    store = open_queue(scale.queue or jobs_file or root / JOBS_FILE)
    bus = EventBus()
    webhooks = WebhookDispatcher(allow=settings.webhook_allow)
    try:
        worker = _workers(store, engines, bus, webhooks, scale)
    except Exception:
        store.close()
        raise
    engine = engines[0]  # folders, output dir and models list are the same for every device
    app = create_app(store=store, worker=worker, bus=bus, engine=engine, settings=settings, auth=auth,
                     output_dir=engine.output_dir, root=root)
    blocks = build_ui(store=store, bus=bus, worker=worker, engine=engine, settings=settings,
                      output_dir=engine.output_dir, defaults=ui_defaults, root=root, preset=preset)
    mount_ui(app, blocks, "/")
    if auth.enabled:
        app.add_middleware(CredentialGuard, auth=auth)
    return Service(app, store, bus, worker, list(engines), webhooks)


def _workers(store: JobQueue, engines: Sequence[Engine], bus: EventBus, webhooks: WebhookDispatcher,
             scale: ScaleOptions) -> Any:
    """In-process workers (one per engine), or Ray actors with ``--ray`` (the API process then only admits and
    streams). Jobs a crash left running are re-queued: all of them in-process; with Ray only those whose lease
    ran out (a live worker elsewhere may still hold the others)."""
    if scale.ray_address is None:
        recovered = store.recover()
        if recovered:
            _log.warning("re-queued %d job(s) interrupted by the last shutdown", len(recovered))
        return WorkerPool([Worker(store, engine, bus, webhook=webhooks, name=f"foci-worker-{index}")
                           for index, engine in enumerate(engines)])
    from foci.service.ray_pool import RayWorkerPool

    if scale.queue is None:
        _log.warning("--ray without --queue postgresql://…: the SQLite queue only works when every worker runs "
                     "on this machine")
    queue = scale.queue or str(store.path)  # type: ignore[attr-defined]
    recovered = store.requeue_expired(include_unleased=True)
    if recovered:
        _log.warning("re-queued %d job(s) whose worker is gone", len(recovered))
    return RayWorkerPool.launch(queue=queue, engine_factory=EngineCopy(engines[0]), bus=bus, store=store,
                                address=scale.ray_address, cpu_workers=scale.ray_cpu_workers, webhook=webhooks)


class CredentialGuard:
    """ASGI middleware: every HTTP request and websocket outside :data:`PUBLIC_PATHS` needs credentials that
    ``auth`` accepts; others get 401 (a websocket is closed with 1008, policy violation)."""

    def __init__(self, app: Any, auth: AuthConfig) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        import anyio.to_thread

        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
        # a password check may run scrypt: off the event loop
        if await anyio.to_thread.run_sync(self.auth.authenticate, headers) is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            body = json.dumps({"detail": "missing or invalid credentials"}, separators=(",", ":")).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Basic realm="foci", Bearer realm="foci"')]})
            await send({"type": "http.response.body", "body": body})


def serve(service: Service, *, host: str, port: int, open_browser: bool) -> None:
    """Run until interrupted; the worker is stopped (its job re-queued) on the way out."""
    import uvicorn

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    service.start()
    print(f"Foci is running at {url}  (API docs: {url}docs)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        # open event streams of queued jobs would otherwise hold a graceful shutdown forever
        uvicorn.run(service.app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        service.close()
