"""The REST API over real HTTP: uvicorn in a thread, a real worker, the tiny engine or a gated stand-in."""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image, PngImagePlugin

from foci.apps.api import create_app
from foci.engine.engine import ProgressEvent
from foci.files.folders import ModelFolders
from foci.files.input_images import InputImageStore
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.auth import AuthConfig
from foci.service.events import EventBus
from foci.service.jobs import JobState, JobStore
from foci.service.webhooks import WebhookDispatcher
from foci.service.worker import Worker
from foci.settings.config import FociSettings
from foci.task import GenerationTask

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
TINY = {"aspect_ratio": "64*64", "steps": 2, "styles": [], "loras": [], "prompt": "a cat"}


# ------------------------------------------------------------------------------------------ helpers
class StubEngine:
    """Engine stand-in: ``generate`` behaves like the real one's loop (interrupt before each image and after each
    step's model call, then progress) and writes tiny PNGs. ``pause_at=(image, step)`` blocks there until
    :meth:`resume`, so tests can act while a job is provably running. Like the engine it reads a task's input
    image and mask from its input store (``output_dir/inputs``); ``inputs_seen`` lists (field, size, mode)."""

    def __init__(self, output_dir: Path, *, pause_at: tuple[int, int] | None = None) -> None:
        self.output_dir = output_dir
        self.folders = ModelFolders.default(output_dir.parent / "models")
        self.styles_dirs: tuple[Path, ...] = ()
        self.pause_at = pause_at
        self.paused = threading.Event()
        self._resume = threading.Event()
        self.calls = 0
        self.inputs_seen: list[tuple[str, tuple[int, int], str]] = []
        self._lock = threading.Lock()

    @property
    def inputs(self) -> InputImageStore:
        return InputImageStore(self.output_dir / "inputs")

    def resume(self) -> None:
        self._resume.set()

    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True, **_: Any) -> list[Any]:
        with self._lock:
            self.calls += 1
            call = self.calls
        for field_name in ("input_image", "inpaint_mask"):
            digest = getattr(task, field_name)
            if digest is not None:
                with self.inputs.open(digest) as image:  # InputImageMissing fails the job, as in the engine
                    image.load()
                    self.inputs_seen.append((field_name, image.size, image.mode))
        results = []
        count, steps = task.image_number, task.steps
        for index, seed in enumerate(task.image_seeds()):
            if interrupt is not None and interrupt() == "stop":
                break
            action = None
            for step in range(steps):
                if self.pause_at == (index, step) and call == 1:
                    self.paused.set()
                    assert self._resume.wait(20), "the test never resumed the stub engine"
                action = interrupt() if interrupt is not None else None
                if action in ("stop", "skip"):
                    break
                if on_progress is not None:
                    done = index * steps + step + 1
                    on_progress(ProgressEvent(index, count, step + 1, steps, 100.0 * done / (steps * count), None))
            if action == "stop":
                break
            if action == "skip":
                continue
            image = Image.new("RGB", task.size, (seed % 256, 0, 0))
            path = self.output_dir / f"job{call}-{index}-{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            results.append(SimpleNamespace(path=path, seed=seed, image=image))
        return results


@dataclass
class ApiServer:
    """A running API: its base URL and the objects behind it."""

    url: str
    port: int
    store: JobStore
    bus: EventBus
    worker: Worker | None
    engine: Any
    output_dir: Path
    app: Any


def tiny_settings(models_dir: Path | None = None, **overrides: Any) -> FociSettings:
    values: dict[str, Any] = {"default_styles": [], "default_model": "tiny-base.safetensors",
                              "default_max_image_number": 8}
    if models_dir is not None:
        values["path_checkpoints"] = [models_dir / "checkpoints"]
    values.update(overrides)
    return FociSettings(**values)


@contextmanager
def run_api(tmp_path: Path, engine: Any, *, with_worker: bool = True, auth: AuthConfig | None = None,
            settings: FociSettings | None = None, webhook: Callable[[Any], None] | None = None,
            max_upload_bytes: int = 20 << 20, poll_interval: float = 0.05) -> Iterator[ApiServer]:
    """Serve the API on a free loopback port in a thread; stop the worker and the server afterwards."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    bus = EventBus()
    worker = Worker(store, engine, bus, poll_interval=poll_interval, webhook=webhook) if with_worker else None
    app = create_app(store=store, worker=worker, bus=bus, engine=engine, settings=settings or tiny_settings(),
                     auth=auth or AuthConfig(), output_dir=engine.output_dir, max_upload_bytes=max_upload_bytes,
                     root=tmp_path)
    app.state.foci.event_poll_seconds = 0.5
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    if worker is not None:
        worker.start()
    try:
        yield ApiServer(f"http://127.0.0.1:{port}", port, store, bus, worker, engine, Path(engine.output_dir), app)
    finally:
        if worker is not None:
            worker.stop(timeout=20)
        server.should_exit = True
        thread.join(20)
        store.close()


def read_events(client: httpx.Client, job_id: str, *, timeout: float = 60, previews: bool = True,
                on_event: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every event of a job's SSE stream until the server ends it (bounded by ``timeout``)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"previews": previews},
                       timeout=httpx.Timeout(timeout, connect=10)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"event stream still open after {timeout} s: {events}"
            if line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                events.append(event)
                if on_event is not None:
                    on_event(event)
            else:
                assert line == "" or line.startswith(":"), line
    return events


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_final(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def ended() -> bool:
        box["job"] = client.get(f"/v1/jobs/{job_id}").json()
        return box["job"]["state"] in ("done", "failed", "cancelled")

    wait_for(ended, timeout, f"job {job_id} to end")
    return box["job"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], Any]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as written (httpx would normalise ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ------------------------------------------------------------------------------------------ end to end
def test_submit_stream_fetch_image_metadata_and_webhook(tmp_path: Path, engine, tiny_models_dir: Path) -> None:
    dispatcher = WebhookDispatcher(timeout=5, retries=1, backoff=0.05, allow=["127.0.0.1"])
    settings = tiny_settings(tiny_models_dir, webhook_allow=["127.0.0.1"])  # the loopback receiver is allow-listed
    with webhook_receiver() as (hook_url, received), \
            run_api(tmp_path, engine, settings=settings, webhook=dispatcher) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        response = client.post("/v1/jobs", json={"task": {**TINY, "image_number": 2, "seed": 5,
                                                          "negative_prompt": "blurry"},
                                                 "webhook_url": hook_url})
        assert response.status_code == 201, response.text
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["state"] in ("queued", "running")
        assert job["task"]["base_model"] == "tiny-base.safetensors"  # from the settings, like the CLI
        assert job["task"]["guidance_scale"] == 7.0  # FociSettings' default_cfg_scale fallback

        events = read_events(client, job["id"])
        kinds = [event["kind"] for event in events]
        assert kinds[0] in ("queued", "started") and kinds[-1] == "done", kinds
        assert kinds.count("image") == 2 and kinds.count("done") == 1
        progress = [event for event in events if event["kind"] == "progress"]
        assert progress and progress[-1]["progress"]["percent"] == pytest.approx(100.0)
        assert {event["job_id"] for event in events} == {job["id"]}
        previews = [event["preview_png"] for event in progress if event["preview_png"]]
        assert previews, "no live preview was streamed"
        assert Image.open(io.BytesIO(base64.b64decode(previews[0]))).format == "PNG"

        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["state"] == "done" and done["attempts"] == 1 and done["error"] is None
        assert [image["seed"] for image in done["images"]] == [5, 6]
        for image in done["images"]:
            fetched = client.get(f"/v1/images/{image['path']}")
            assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
            local = tmp_path / "fetched.png"
            local.write_bytes(fetched.content)
            scheme, payload = read_metadata(local)
            restored = task_from_metadata(payload, scheme)
            assert (restored.seed, restored.prompt, restored.negative_prompt) == (image["seed"], "a cat", "blurry")
            assert Image.open(local).size == (64, 64) == (image["width"], image["height"])

        # the same file back through POST /v1/metadata, as a form upload and as a raw body
        upload = client.post("/v1/metadata", files={"file": ("x.png", fetched.content, "image/png")})
        assert upload.status_code == 200, upload.text
        assert upload.json()["scheme"] == "fooocus"
        assert upload.json()["task"]["seed"] == 6 and upload.json()["task"]["steps"] == 2
        raw = client.post("/v1/metadata", content=fetched.content, headers={"Content-Type": "image/png"})
        assert raw.status_code == 200 and raw.json()["task"]["prompt"] == "a cat"

        # a late subscriber gets the replay of a finished job and the stream ends at once
        replay = read_events(client, job["id"], timeout=10, previews=False)
        assert [event["kind"] for event in replay] == ["image", "image", "done"]

        wait_for(lambda: len(received) == 1, 15, "the webhook")
        path, headers, body = received[0]
        assert path == "/hook" and headers["Content-Type"] == "application/json"
        assert body["id"] == job["id"] and body["state"] == "done" and len(body["images"]) == 2
    dispatcher.close()


def test_failed_job_reports_its_error(tmp_path: Path, engine, tiny_models_dir: Path) -> None:
    with run_api(tmp_path, engine, settings=tiny_settings(tiny_models_dir)) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", json={"task": {**TINY, "base_model": "missing.safetensors"}}).json()
        events = read_events(client, job["id"])
        assert events[-1]["kind"] == "failed" and "missing.safetensors" in events[-1]["error"]
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "failed"


# ------------------------------------------------------------------------------------------ queue control
def test_skip_and_cancel_semantics(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out", pause_at=(0, 1))
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        first = client.post("/v1/jobs", json={"task": {**TINY, "steps": 3, "image_number": 3, "seed": 10}}).json()
        second = client.post("/v1/jobs", json={"task": {**TINY, "seed": 20}}).json()
        third = client.post("/v1/jobs", json={"task": {**TINY, "seed": 30}}).json()
        assert stub.paused.wait(20)
        assert client.get(f"/v1/jobs/{first['id']}").json()["state"] == "running"

        # skipping needs a running job
        assert client.post(f"/v1/jobs/{second['id']}/skip").status_code == 409
        assert client.post("/v1/jobs/nope/skip").status_code == 404
        skipped = client.post(f"/v1/jobs/{first['id']}/skip")
        assert skipped.status_code == 200 and skipped.json()["state"] == "running"

        # a queued job is cancelled at once and its stream replays that and ends
        cancelled = client.delete(f"/v1/jobs/{second['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert [e["kind"] for e in read_events(client, second["id"], timeout=10)] == ["cancelled"]
        assert client.delete(f"/v1/jobs/{second['id']}").status_code == 409
        assert client.delete("/v1/jobs/nope").status_code == 404

        stream: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: stream.extend(read_events(client, first["id"])))
        reader.start()
        wait_for(lambda: api.bus.subscriber_count == 1, 10, "the event stream to subscribe")
        stub.resume()
        reader.join(60)
        kinds = [event["kind"] for event in stream]
        assert kinds[0] == "started" and "skipped" in kinds and kinds[-1] == "done", kinds
        done = client.get(f"/v1/jobs/{first['id']}").json()
        assert done["state"] == "done" and done["skipped_images"] == 1
        assert [image["seed"] for image in done["images"]] == [11, 12]  # image 0 (seed 10) was skipped
        assert wait_final(client, third["id"])["state"] == "done"
        assert client.post(f"/v1/jobs/{first['id']}/skip").status_code == 409  # over


def test_cancelling_a_running_job_stops_it(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out", pause_at=(1, 0))
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", json={"task": {**TINY, "image_number": 3, "seed": 1}}).json()
        assert stub.paused.wait(20)
        response = client.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 200
        assert response.json()["state"] == "running" and response.json()["cancel_requested"] is True
        stream: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: stream.extend(read_events(client, job["id"])))
        reader.start()
        wait_for(lambda: api.bus.subscriber_count == 1, 10, "the event stream to subscribe")
        stub.resume()
        reader.join(60)
        assert stream[0]["kind"] == "started" and stream[-1]["kind"] == "cancelled"
        final = client.get(f"/v1/jobs/{job['id']}").json()
        assert final["state"] == "cancelled"
        assert [image["seed"] for image in final["images"]] == [1]  # the image finished before the cancel is kept


def test_reorder_edit_and_list(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out", pause_at=(0, 0))
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        running = client.post("/v1/jobs", json={"task": {**TINY, "seed": 0}}).json()
        assert stub.paused.wait(20)
        ids = [client.post("/v1/jobs", json={"task": {**TINY, "seed": seed}}).json()["id"] for seed in (1, 2, 3, 4)]
        a, b, c, d = ids

        def queued() -> list[str]:
            return [job["id"] for job in client.get("/v1/jobs", params={"state": "queued"}).json()]

        assert queued() == [a, b, c, d]
        assert client.post(f"/v1/jobs/{d}/move", json={"to_front": True}).status_code == 200
        assert queued() == [d, a, b, c]
        assert client.post(f"/v1/jobs/{d}/move", json={"to_back": True}).json()["id"] == d
        assert queued() == [a, b, c, d]
        assert client.post(f"/v1/jobs/{c}/move", json={"before": a}).status_code == 200
        assert queued() == [c, a, b, d]
        for body in ({}, {"to_front": True, "to_back": True}, {"before": a, "to_front": True}, {"up": 1}):
            assert client.post(f"/v1/jobs/{b}/move", json=body).status_code == 422, body
        assert client.post(f"/v1/jobs/{b}/move", json={"before": "nope"}).status_code == 422
        assert client.post(f"/v1/jobs/{running['id']}/move", json={"to_front": True}).status_code == 409
        assert client.post("/v1/jobs/nope/move", json={"to_front": True}).status_code == 404

        # edit: priority jumps the queue; task fields merge over the job's task
        edited = client.patch(f"/v1/jobs/{d}", json={"priority": 5, "task": {"prompt": "a dog", "steps": 3}})
        assert edited.status_code == 200, edited.text
        assert edited.json()["priority"] == 5
        assert edited.json()["task"]["prompt"] == "a dog" and edited.json()["task"]["steps"] == 3
        assert edited.json()["task"]["seed"] == 4 and edited.json()["task"]["aspect_ratio"] == "64*64"
        assert queued() == [d, c, a, b]
        assert client.patch(f"/v1/jobs/{d}", json={"task": {"sampler": "nope"}}).status_code == 422
        assert client.patch(f"/v1/jobs/{d}", json={}).status_code == 422
        assert client.patch(f"/v1/jobs/{running['id']}", json={"priority": 1}).status_code == 409
        assert client.patch("/v1/jobs/nope", json={"priority": 1}).status_code == 404

        both = client.get("/v1/jobs", params=[("state", "running"), ("state", "queued")]).json()
        assert [job["id"] for job in both] == [running["id"], d, c, a, b]
        assert len(client.get("/v1/jobs", params={"state": "queued,running", "limit": 2}).json()) == 2
        assert len(client.get("/v1/jobs", params={"state": "queued", "offset": 3}).json()) == 1
        assert client.get("/v1/jobs", params={"state": "sleeping"}).status_code == 422
        assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422

        stub.resume()
        finals = {job_id: wait_final(client, job_id) for job_id in ids}
        order = sorted(ids, key=lambda job_id: finals[job_id]["started_at"])
        assert order == [d, c, a, b]
        assert finals[d]["images"][0]["seed"] == 4


# ------------------------------------------------------------------------------------------ validation, info
def test_validation_errors_are_422_with_the_message(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        cases = [
            ({"task": {"sampler": "warp"}}, "task.sampler: unknown sampler 'warp'"),
            ({"task": {"aspect_ratio": "100*100"}}, "width 100 must be a multiple of 8"),
            ({"task": {"steps": 0}}, "steps"),
            ({"task": {"colour": "red"}}, "task.colour: Extra inputs are not permitted"),
            ({"task": {"image_number": 9}}, "above the server's maximum 8"),
            ({"task": {"styles": ["No Such Style"]}}, "unknown style"),
            ({"task": {}, "webhook_url": "ftp://example.org/x"}, "http:// or https://"),
            ({"task": {}, "webhook_url": "file:///etc/passwd"}, "http:// or https://"),
            ({"task": {}, "priority": "high"}, "priority"),
            ({"task": {"steps": None}}, "steps"),
            ({"task": {}, "extra": 1}, "extra: Extra inputs are not permitted"),
        ]
        for body, message in cases:
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (body, response.text)
            assert message in response.json()["detail"], (body, response.json())
        assert client.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
                           ).status_code == 422
        assert client.get("/v1/jobs").json() == []
        ok = client.post("/v1/jobs", json={"task": {"performance": "lightning"}})
        assert ok.status_code == 201 and 0 <= ok.json()["task"]["seed"] < 2**63  # a random seed when none given
        assert client.get("/v1/jobs/nope").status_code == 404


def test_info_endpoints(tmp_path: Path, tiny_models_dir: Path) -> None:
    from foci.engine.engine import Engine

    real = Engine(models_dir=tiny_models_dir, output_dir=tmp_path / "out", device="cpu")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.json").write_text("{}")
    with run_api(tmp_path, real, with_worker=False, settings=tiny_settings(tiny_models_dir)) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        models = client.get("/v1/models").json()
        assert models["checkpoints"] == ["tiny-base.safetensors", "tiny-refiner.safetensors"]
        assert models["loras"] == [] and models["vae"] == []
        assert models["default_model"] == "tiny-base.safetensors"
        styles = client.get("/v1/styles").json()
        names = [style["name"] for style in styles["styles"]]
        assert names[:2] == ["Fooocus V2", "Random Style"] and len(names) > 100
        assert styles["styles"][0]["special"] is True and not styles["styles"][2]["special"]
        assert sum("{prompt}" in style["prompt"] for style in styles["styles"]) > 100
        presets = client.get("/v1/presets").json()["presets"]
        assert {"default", "lightning", "mine"} <= set(presets)
        ratios = client.get("/v1/aspect-ratios").json()
        assert ratios["default"] == "1152*896"
        assert {"value": "1152*896", "label": "1152×896 (9:7)", "width": 1152, "height": 896} in ratios["aspect_ratios"]
        samplers = client.get("/v1/samplers").json()
        assert len(samplers["names"]) == 24 and samplers["default"] == "dpmpp_2m_sde_gpu"
        schedulers = client.get("/v1/schedulers").json()
        assert "karras" in schedulers["names"] and schedulers["default"] == "karras"
        health = client.get("/v1/health").json()
        assert health == {"status": "ok", "version": health["version"], "worker": "none", "queued": 0,
                          "running": 0, "auth": False, "queue_depth": 0, "workers": []}


def test_openapi_schema(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        schema = client.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.")
        expected = {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/skip", "/v1/jobs/{job_id}/move",
                    "/v1/jobs/{job_id}/events", "/v1/images/{path}", "/v1/models", "/v1/styles", "/v1/presets",
                    "/v1/aspect-ratios", "/v1/samplers", "/v1/schedulers", "/v1/health", "/v1/metadata"}
        assert expected <= set(schema["paths"])
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                assert operation.get("responses"), (path, method)
        assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete", "patch"}
        task_fields = schema["components"]["schemas"]["TaskFields"]["properties"]
        assert {"prompt", "seed", "sampler", "loras"} <= set(task_fields)
        assert "multipart/form-data" in schema["paths"]["/v1/metadata"]["post"]["requestBody"]["content"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text
        assert "http" not in docs.text.replace("http.", "")  # nothing loaded from elsewhere (offline)
        assert client.get("/redoc").status_code == 404
        try:
            from openapi_spec_validator import validate
        except ImportError:
            return
        validate(schema)


# ------------------------------------------------------------------------------------------ security
def test_image_paths_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    output = tmp_path / "out"
    (output / "2026-01-01").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(output / "2026-01-01" / "ok.png")
    (output / "notes.txt").write_text("not an image")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET")
    (output / "escape.png").symlink_to(secret)
    (output / "link-dir").symlink_to(tmp_path)
    (output / "inside.png").symlink_to(output / "2026-01-01" / "ok.png")
    stub = StubEngine(output)
    with run_api(tmp_path, stub, with_worker=False) as api:
        status, body = raw_get(api.port, "/v1/images/2026-01-01/ok.png")
        assert status == 200 and body.startswith(b"\x89PNG")
        assert raw_get(api.port, "/v1/images/inside.png")[0] == 200
        attacks = [
            "/v1/images/../secret.png", "/v1/images/2026-01-01/../../secret.png", "/v1/images/%2e%2e/secret.png",
            "/v1/images/%2E%2E/secret.png", "/v1/images/..%2fsecret.png", "/v1/images/%2e%2e%2fsecret.png",
            "/v1/images/%252e%252e/secret.png", "/v1/images/%252e%252e%252fsecret.png", "/v1/images//etc/passwd",
            "/v1/images/%2Fetc%2Fpasswd", "/v1/images/..%5csecret.png", "/v1/images/C:%5csecret.png",
            "/v1/images/escape.png", "/v1/images/link-dir/secret.png", "/v1/images/./2026-01-01/ok.png",
            "/v1/images/2026-01-01//ok.png", "/v1/images/ok.png%00.png", "/v1/images/notes.txt",
            "/v1/images/missing.png", f"/v1/images/{secret}",
        ]
        for target in attacks:
            status, body = raw_get(api.port, target)
            assert 400 <= status < 500, (target, status)
            assert b"SECRET" not in body, target


def test_upload_limits(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False, max_upload_bytes=4096) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        big = b"\x89PNG" + bytes(6000)
        assert client.post("/v1/metadata", content=big, headers={"Content-Type": "image/png"}).status_code == 413
        assert client.post("/v1/metadata", files={"file": ("x.png", big, "image/png")}).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            for _ in range(6):
                yield bytes(1000)

        assert client.post("/v1/metadata", content=chunks(), headers={"Content-Type": "image/png"}
                           ).status_code == 413
        # small uploads: a PNG without metadata, one with, and something that is no image
        plain = io.BytesIO()
        Image.new("RGB", (8, 8)).save(plain, format="PNG")
        response = client.post("/v1/metadata", files={"file": ("x.png", plain.getvalue(), "image/png")})
        assert response.status_code == 422 and "no generation metadata" in response.json()["detail"]
        assert client.post("/v1/metadata", content=b"hello", headers={"Content-Type": "image/png"}
                           ).status_code == 422
        assert client.post("/v1/metadata", files={"other": ("x.png", b"1", "image/png")}).status_code == 422
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a red fox\nNegative prompt: ugly\nSteps: 12, Sampler: Euler a, Seed: 99, "
                                    "Size: 64x64, CFG scale: 5")
        info.add_text("fooocus_scheme", "a1111")
        tagged = io.BytesIO()
        Image.new("RGB", (8, 8)).save(tagged, format="PNG", pnginfo=info)
        found = client.post("/v1/metadata", files={"file": ("x.png", tagged.getvalue(), "image/png")})
        assert found.status_code == 200, found.text
        assert found.json()["scheme"] == "a1111"
        assert (found.json()["task"]["prompt"], found.json()["task"]["seed"]) == ("a red fox", 99)


# ------------------------------------------------------------------------------------------ load
def test_parallel_submissions_with_cancels_end_consistently(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, poll_interval=0.01) as api:
        outcomes: dict[str, str] = {}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def client_thread(offset: int) -> None:
            try:
                with httpx.Client(base_url=api.url, timeout=30) as client:
                    for number in range(25):
                        response = client.post("/v1/jobs", json={"task": {**TINY, "steps": 1, "seed": offset + number,
                                                                          "image_number": 1 + number % 2}})
                        assert response.status_code == 201, response.text
                        job_id = response.json()["id"]
                        outcome = "submitted"
                        if (offset // 1000 * 25 + number) % 10 == 3:  # 10 %: some queued, running or done
                            cancel = client.delete(f"/v1/jobs/{job_id}")
                            assert cancel.status_code in (200, 409), cancel.text
                            outcome = "cancel-ok" if cancel.status_code == 200 else "cancel-late"
                        with lock:
                            outcomes[job_id] = outcome
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [threading.Thread(target=client_thread, args=(index * 1000,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors[0]
        assert len(outcomes) == 200
        wait_for(lambda: api.store.count(states=[JobState.QUEUED, JobState.RUNNING]) == 0, 120, "an empty queue")
        jobs = {job.id: job for job in api.store.list(limit=1000)}
        assert set(jobs) == set(outcomes)
        for job_id, outcome in outcomes.items():
            job = jobs[job_id]
            if outcome == "cancel-ok":
                assert job.state == JobState.CANCELLED, job
            else:
                assert job.state == JobState.DONE, job
                assert len(job.images) == job.task.image_number and job.attempts == 1
                assert all((api.output_dir / image.path).is_file() for image in job.images)
        assert sum(outcome.startswith("cancel") for outcome in outcomes.values()) == 20
        assert "cancel-ok" in outcomes.values()
        with httpx.Client(base_url=api.url, timeout=30) as client:
            health = client.get("/v1/health").json()
            assert (health["queued"], health["running"], health["worker"]) == (0, 0, "running")
            listed = client.get("/v1/jobs", params={"state": "done,cancelled", "limit": 1000}).json()
            assert len(listed) == 200



def test_event_streams_end_when_the_client_leaves_or_the_server_closes(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", json={"task": TINY}).json()
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            lines = response.iter_lines()  # keep it referenced: a dropped iterator closes the response
            assert json.loads(next(lines).removeprefix("data: "))["kind"] == "queued"
            time.sleep(0.1)
            assert api.bus.subscriber_count == 1
        wait_for(lambda: api.bus.subscriber_count == 0, 10, "the subscription of a closed stream to end")
        assert client.get("/v1/jobs/nope/events").status_code == 404
        assert api.bus.subscriber_count == 0

        # no worker: this stream ends only because the server closes its streams
        box: list[list[dict[str, Any]]] = []
        reader = threading.Thread(target=lambda: box.append(read_events(client, job["id"], timeout=20)))
        reader.start()
        wait_for(lambda: api.bus.subscriber_count == 1, 10, "the stream to subscribe")
        started = time.monotonic()
        api.app.state.foci.close_streams()
        reader.join(10)
        assert not reader.is_alive() and time.monotonic() - started < 5
        assert [event["kind"] for event in box[0]] == ["queued"]


# ------------------------------------------------------------------------------------------ webhooks
class _FlakyReceiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        statuses: list[int] = self.server.statuses  # type: ignore[attr-defined]
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(statuses.pop(0) if statuses else 204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.parametrize(("statuses", "delivered", "hits"), [
    ([], True, 1), ([500], True, 2), ([503, 502], True, 3), ([500, 500, 500], False, 3), ([404], False, 1),
])
def test_webhook_retries(statuses: list[int], delivered: bool, hits: int) -> None:
    from foci.service.webhooks import post_webhook

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyReceiver)
    server.statuses, server.hits = list(statuses), 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        job = SimpleNamespace(id="j1", state=JobState.DONE, webhook_url=f"http://127.0.0.1:{server.server_address[1]}/",
                              model_dump_json=lambda: '{"id": "j1"}')
        assert post_webhook(job, timeout=5, retries=2, backoff=0.01, allow=["127.0.0.1"]) is delivered
        assert server.hits == hits  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_webhook_to_a_dead_port_gives_up_without_raising() -> None:
    import socket

    from foci.service.webhooks import WebhookError, post_webhook, validate_webhook_url

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = SimpleNamespace(id="j2", state=JobState.FAILED, webhook_url=f"http://127.0.0.1:{port}/x",
                          model_dump_json=lambda: "{}")
    started = time.monotonic()
    assert post_webhook(job, timeout=2, retries=2, backoff=0.01, allow=["127.0.0.1"]) is False
    assert time.monotonic() - started < 10
    for bad in ("ftp://h/x", "javascript:alert(1)", "http://", "http://h:port/", "http://h/ x", "/relative"):
        with pytest.raises(WebhookError):
            validate_webhook_url(bad)
    assert validate_webhook_url(" https://example.org/hook?a=1 ") == "https://example.org/hook?a=1"


class _RedirectingReceiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hits += 1  # type: ignore[attr-defined]
        location = self.server.location  # type: ignore[attr-defined]
        self.send_response(303 if location else 204)
        if location:
            self.send_header("Location", location)
        self.end_headers()

    do_GET = do_POST  # noqa: N815 - a redirected POST arrives as GET

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def counting_receiver(location: str | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectingReceiver)
    server.hits, server.location = 0, location  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_webhooks_to_loopback_and_other_non_public_addresses_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    from foci.service.webhooks import post_webhook

    with counting_receiver() as receiver:
        port = receiver.server_address[1]
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://0.0.0.0:{port}/",
                    f"http://[::1]:{port}/", f"http://2130706433:{port}/", f"http://0x7f000001:{port}/",
                    f"http://[::ffff:127.0.0.1]:{port}/", "http://169.254.169.254/", "http://10.1.2.3/",
                    "http://224.0.0.1/"):
            job = SimpleNamespace(id="j3", state=JobState.DONE, webhook_url=url, model_dump_json=lambda: "{}")
            with caplog.at_level(logging.WARNING, logger="foci.service.webhooks"):
                assert post_webhook(job, timeout=2, retries=2, backoff=0.01) is False, url
            assert "refused" in caplog.text
            caplog.clear()
        assert receiver.hits == 0  # type: ignore[attr-defined]
        job = SimpleNamespace(id="j3", state=JobState.DONE, webhook_url=f"http://localhost:{port}/",
                              model_dump_json=lambda: "{}")
        assert post_webhook(job, timeout=5, retries=0, allow=["127.0.0.0/8"]) is True
        assert receiver.hits == 1  # type: ignore[attr-defined]


def test_webhook_redirect_to_a_non_allowed_address_is_refused() -> None:
    from foci.service.webhooks import post_webhook

    with counting_receiver() as inner, \
            counting_receiver(f"http://127.0.0.1:{inner.server_address[1]}/") as outer:
        job = SimpleNamespace(id="j4", state=JobState.DONE, webhook_url=f"http://localhost:{outer.server_address[1]}/",
                              model_dump_json=lambda: "{}")
        assert post_webhook(job, timeout=5, retries=2, backoff=0.01, allow=["localhost"]) is False
        assert (outer.hits, inner.hits) == (1, 0)  # type: ignore[attr-defined]
        assert post_webhook(job, timeout=5, retries=0, allow=["localhost", "127.0.0.1"]) is True
        assert (outer.hits, inner.hits) == (2, 1)  # type: ignore[attr-defined]


def test_submit_refuses_a_webhook_at_a_non_public_address_unless_allowed(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        for url in (f"http://127.0.0.1:{api.port}/v1/jobs", "http://2130706433/", "http://[::1]/x",
                    "http://0.0.0.0/"):
            response = client.post("/v1/jobs", json={"task": {}, "webhook_url": url})
            assert response.status_code == 422, (url, response.text)
            assert "webhook_url refused" in response.json()["detail"]
        assert api.store.list() == []
    allowed = tiny_settings(webhook_allow=["127.0.0.1"])
    with run_api(tmp_path / "b", stub, with_worker=False, settings=allowed) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        response = client.post("/v1/jobs", json={"task": {}, "webhook_url": "http://127.0.0.1:9/hook"})
        assert response.status_code == 201, response.text


@pytest.mark.browser
def test_docs_page_renders_offline(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at " + CHROMIUM)
    from playwright.sync_api import sync_playwright

    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on("request", lambda request: None if request.url.startswith(api.url) else outside.append(
                request.url))
            page.goto(f"{api.url}/docs", timeout=20_000)
            page.wait_for_selector(".op", timeout=20_000)
            text = page.inner_text("body")
            assert "/v1/jobs/{job_id}/events" in text and "Queue a job" in text and "TaskFields" in text
            assert page.locator(".op").count() >= 15
            # no internal references (spec sections, Sphinx roles, double backticks) reach a reader
            assert "§" not in text and "``" not in text and ":class:" not in text
            # the request fields of POST /v1/jobs, with their bounds and defaults
            jobs = page.locator(".op", has_text="Queue a job").first
            jobs.locator("summary", has_text="request fields").click()
            assert "priority" in jobs.inner_text() and "task" in jobs.inner_text()
            # try a request from the page
            health = page.locator(".op", has=page.locator("code", has_text="/v1/health")).first
            health.locator("summary", has_text="Try it").click()
            health.get_by_role("button", name="Send GET").click()
            page.wait_for_function("() => [...document.querySelectorAll('.out')].some(e => e.textContent)")
            assert health.locator(".out").inner_text().startswith("200")
            assert outside == []
        finally:
            browser.close()
