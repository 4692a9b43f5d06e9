"""Issue 13: what a hostile request or file could do to Foci, each class tested over real HTTP."""

from __future__ import annotations

import json
import random
import socket
import sqlite3
import struct
import threading
import time
import urllib.error
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from pydantic import ValidationError

from foci.apps.serve import Service, build_service
from foci.records.image_input import MAX_IMAGE_PIXELS, ImageInputError, ImageTooLargeError, open_image
from foci.records.outputs import read_metadata
from foci.service.jobs import JobState, JobStore
from foci.task import GenerationTask
from tests.service.test_api import StubEngine, run_api, tiny_settings, wait_final

SURROGATE_JSON = b'{"task": {"prompt": "a cat \\ud800", "steps": 2}}'


# ------------------------------------------------------------------------------------------ the task record
@pytest.mark.parametrize("fields", [
    {"overwrite_step": 10**9}, {"overwrite_step": 100_000}, {"overwrite_switch": 10**9}, {"overwrite_step": -2},
    {"overwrite_width": 10**9}, {"overwrite_height": 100_000}, {"overwrite_width": -7},
    {"loras": [{"name": "x.safetensors", "weight": 1e30}]}, {"freeu": {"enabled": True, "b1": 1e9}},
    {"loras": [{"name": f"l{i}.safetensors"} for i in range(33)]}, {"prompt": "x" * 20_001},
    {"base_model": "m" * 2000}, {"styles": ["s" * 2000]}, {"prompt": "a\0b"}, {"negative_prompt": "\udfff"},
    {"loras": [{"name": "\ud800.safetensors"}]}, {"vae": "v\0"},
])
def test_the_record_bounds_every_field(fields: dict) -> None:
    with pytest.raises(ValidationError):
        GenerationTask(**fields)


def test_generous_values_stay_valid() -> None:
    task = GenerationTask(overwrite_step=200, overwrite_switch=200, overwrite_width=4096, overwrite_height=64,
                          prompt="x" * 20_000, loras=[{"name": "a.safetensors", "weight": -10}],
                          freeu={"b1": 2, "s1": 4}, image_number=32, steps=200)
    assert task.size == (4096, 64) and task.effective_steps == 200


def test_bad_numbers_and_text_are_422_over_http(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        for fields, where in [({"overwrite_step": 10**9}, "task.overwrite_step"),
                              ({"overwrite_switch": 100_000}, "task.overwrite_switch"),
                              ({"overwrite_width": 10**9}, "task.overwrite_width"),
                              ({"overwrite_height": 10**6}, "task.overwrite_height"),
                              ({"prompt": "y" * 30_000}, "task.prompt"),
                              ({"loras": [{"name": "a.safetensors", "weight": 1e300}]}, "task.loras.0.weight")]:
            response = client.post("/v1/jobs", json={"task": fields})
            assert response.status_code == 422, (fields, response.text)
            assert where in response.json()["detail"], response.json()
        for body in (SURROGATE_JSON, b'{"task": {"negative_prompt": "\\udc80x"}}',
                     b'{"task": {"prompt": "nul \\u0000 here"}}'):
            response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, response.text
            assert "prompt" in response.json()["detail"]
        queued = client.post("/v1/jobs", json={"task": {"prompt": "ok"}})
        assert queued.status_code == 201
        job_id = queued.json()["id"]
        response = client.patch(f"/v1/jobs/{job_id}", content=b'{"task": {"prompt": "\\ud83d"}}',
                                headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        patched = client.patch(f"/v1/jobs/{job_id}", json={"task": {"vae": "/etc/passwd"}})
        assert patched.status_code == 422 and "task.vae" in patched.json()["detail"], patched.text
        listed = client.get("/v1/jobs")
        assert listed.status_code == 200 and [job["id"] for job in listed.json()] == [job_id]
        assert listed.json()[0]["task"]["prompt"] == "ok"
        assert client.get("/v1/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------------------ a full server (UI + API)
@dataclass
class RunningService:
    url: str
    service: Service


@contextmanager
def run_service(root: Path, engine: object, **settings: object) -> Iterator[RunningService]:
    """``foci serve`` in-process: :func:`build_service` (UI, API, history, worker) under uvicorn on a free port."""
    service = build_service(settings=tiny_settings(**settings), engines=[engine], root=root)  # type: ignore[list-item]
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="test-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.01)
    service.start()
    try:
        yield RunningService(f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", service)
    finally:
        service.app.state.foci.close_streams()
        server.should_exit = True
        thread.join(20)
        service.close()


def assert_healthy(client: httpx.Client) -> list[dict]:
    """Health answers ok, the job list and the history page still work; returns the job list."""
    assert client.get("/v1/health").json()["status"] == "ok"
    listed = client.get("/v1/jobs", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    return listed.json()


# ------------------------------------------------------------------------------------------ 1. the job store
def _poison(database: Path) -> dict[str, str]:
    """Rows an older Foci (or a damaged file) left behind that this one cannot decode, plus one good job."""
    JobStore(database).close()
    rows = {
        "surrogate": '{"prompt": "a cat \\ud800", "steps": 2}',  # what the old code stored for "\ud800"
        "not-utf8": b'{"prompt": "caf\xe9", "steps": 2}',
        "not-json": "{this is not json",
        "bad-field": '{"steps": 100000}',
    }
    with sqlite3.connect(database) as conn:
        for index, (job_id, task) in enumerate(rows.items()):
            value = "CAST(? AS TEXT)" if isinstance(task, bytes) else "?"
            conn.execute(f"INSERT INTO jobs (id, task, state, priority, position, created_at) "
                         f"VALUES (?, {value}, ?, 0, ?, ?)",
                         (job_id, task, "queued" if index % 2 else "done", index + 1.0, time.time()))
    return {job_id: job_id for job_id in rows}


def test_a_poisoned_job_store_still_serves_every_reader_also_after_a_restart(tmp_path: Path) -> None:
    bad = _poison(tmp_path / "jobs.sqlite3")
    stub = StubEngine(tmp_path / "out")
    for attempt in range(2):  # the second start is the restart
        with run_service(tmp_path, stub) as running, httpx.Client(base_url=running.url, timeout=30) as client:
            jobs = {job["id"]: job for job in assert_healthy(client)}
            assert set(bad) <= set(jobs)
            for job_id in bad:
                assert jobs[job_id]["state"] == "failed" and jobs[job_id]["unreadable"] is True, jobs[job_id]
                assert "cannot read" in jobs[job_id]["error"]
                one = client.get(f"/v1/jobs/{job_id}")
                assert one.status_code == 200 and one.json()["state"] == "failed"
            history = client.get("/history")
            assert history.status_code == 200 and "cannot read" in history.text
            assert client.get("/v1/jobs", params={"state": "failed"}).status_code == 200
            good = client.post("/v1/jobs", json={"task": {"prompt": f"run {attempt}", "steps": 2,
                                                          "image_number": 1, "aspect_ratio": "64*64"}})
            assert good.status_code == 201
            assert wait_final(client, good.json()["id"])["state"] == "done"  # the worker passed the bad rows
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        assert {store.get(job_id).state for job_id in bad} == {JobState.FAILED}
        store.delete("not-json")
        assert len(store.list()) == 5


def test_a_surrogate_prompt_never_poisons_the_store(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_service(tmp_path, stub) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        response = client.post("/v1/jobs", content=SURROGATE_JSON, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and "prompt" in response.json()["detail"]
        assert assert_healthy(client) == []
        assert client.get("/history").status_code == 200


# ------------------------------------------------------------------------------------------ 2. model paths
OUTSIDE_NAMES = ["/etc/passwd", "../../../../etc/passwd", "~/.bashrc", "~root/.bashrc", "sub/../../escape.safetensors",
                 "..\\..\\escape.safetensors", "C:\\Windows\\win.ini", "C:escape.safetensors", "\\\\host\\share\\x",
                 "..", "jobs.sqlite3\0.safetensors"]


def test_the_api_takes_model_names_inside_the_folders_only(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_service(tmp_path, stub) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        for name in OUTSIDE_NAMES:
            for fields, where in [({"base_model": name}, "base_model"), ({"refiner_model": name}, "refiner_model"),
                                  ({"vae": name}, "vae"), ({"loras": [{"name": name}]}, "loras.0.name"),
                                  ({"upscale_model": name}, "upscale_model")]:
                response = client.post("/v1/jobs", json={"task": fields})
                assert response.status_code == 422, (fields, response.text)
                assert f"task.{where}" in response.json()["detail"] or where in response.json()["detail"]
        queued = client.post("/v1/jobs", json={"task": {"base_model": "sub/model.safetensors",
                                                        "loras": [{"name": "style.safetensors"}]}})
        assert queued.status_code == 201
        job_id = queued.json()["id"]
        assert [job["id"] for job in assert_healthy(client)] == [job_id]


def test_the_server_engine_looks_only_inside_its_folders(tmp_path: Path, tiny_checkpoint: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from foci.engine.engine import Engine, GenerationError

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "linked.safetensors").symlink_to(tiny_checkpoint)  # the operator's own link
    (tmp_path / "stray.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.chdir(tmp_path)
    local = Engine(models_dir=models, output_dir=tmp_path / "out", device="cpu")
    served = Engine(models_dir=models, output_dir=tmp_path / "out", device="cpu", accept_paths=False)
    assert local.resolve("checkpoints", str(tiny_checkpoint)) == tiny_checkpoint  # the CLI's user may use paths
    assert local.resolve("checkpoints", "stray.safetensors").name == "stray.safetensors"
    for name in (str(tiny_checkpoint), "stray.safetensors", "../stray.safetensors", "~/stray.safetensors"):
        with pytest.raises(GenerationError):
            served.resolve("checkpoints", name)
    assert served.resolve("checkpoints", "linked.safetensors") == models / "checkpoints" / "linked.safetensors"
    assert served.resolve("checkpoints", "linked") == models / "checkpoints" / "linked.safetensors"


def test_the_ui_takes_model_names_inside_the_folders_only(tmp_path: Path) -> None:
    from foci.apps.webui import UIError, build_ui, values_from_task
    from foci.service.events import EventBus

    stub = StubEngine(tmp_path / "out")
    blocks = build_ui(store=JobStore(tmp_path / "jobs.sqlite3"), bus=EventBus(), worker=None, engine=stub,
                      settings=tiny_settings(), output_dir=stub.output_dir, root=tmp_path)
    ui = blocks.controller
    good = GenerationTask(base_model="tiny-base.safetensors", styles=[], image_number=1)
    assert ui.make_task(values_from_task(good, lora_rows=ui.lora_rows), random=True).base_model == good.base_model
    for name in OUTSIDE_NAMES[:4]:
        for task in (good.model_copy(update={"base_model": name}), good.model_copy(update={"vae": name})):
            with pytest.raises(UIError, match="model folder|leave its folder"):
                ui.make_task(values_from_task(task, lora_rows=ui.lora_rows), random=True)


# ------------------------------------------------------------------------------------------ 5. size limits
def png_header_only(width: int, height: int, *, text: dict[str, str] | None = None) -> bytes:
    """A small PNG file whose header describes a ``width`` × ``height`` RGBA image (its pixel data is a stub):
    what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))]
    for key, value in (text or {}).items():
        parts.append(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    parts += [chunk(b"IDAT", zlib.compress(bytes(4096))), chunk(b"IEND", b"")]
    return b"".join(parts)


def test_every_route_caps_its_body(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_service(tmp_path, stub) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        huge_prompt = json.dumps({"task": {"prompt": "x" * (25 << 20)}}).encode()
        response = client.post("/v1/jobs", content=huge_prompt, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "larger than" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"task": {"prompt": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}}'

        for method, path in [("POST", "/v1/jobs"), ("PATCH", "/v1/jobs/x"), ("POST", "/v1/jobs/x/move"),
                             ("POST", "/gradio_api/queue/join"), ("POST", "/history"), ("GET", "/v1/jobs")]:
            response = client.request(method, path, content=chunks(), headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (method, path, response.status_code)
        big_upload = b"\x89PNG" + bytes(21 << 20)
        for path in ("/v1/metadata", "/gradio_api/upload"):
            response = client.post(path, files={"files" if "gradio" in path else "file": ("x.png", big_upload)})
            assert response.status_code == 413, (path, response.status_code)
        ok = client.post("/v1/jobs", json={"task": {"prompt": "z" * 20_000, "image_number": 1, "steps": 2,
                                                    "aspect_ratio": "64*64"}})
        assert ok.status_code == 201
        assert len(assert_healthy(client)) == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(13_000, 13_000), (30_000, 30_000), (60_000, 1_000)])
def test_pixel_bombs_are_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    bomb = png_header_only(width, height, text={"parameters": '{"prompt": "boom"}', "fooocus_scheme": "fooocus"})
    assert len(bomb) < 10_000
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        for response in (client.post("/v1/metadata", content=bomb, headers={"Content-Type": "image/png"}),
                         client.post("/v1/metadata", files={"file": ("bomb.png", bomb, "image/png")})):
            assert response.status_code == 413, response.text
            assert "Mpx" in response.json()["detail"] and str(tmp_path) not in response.text
        assert client.get("/v1/health").json()["status"] == "ok"
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match="Mpx"):
        read_metadata(tmp_path / "bomb.png")


def test_images_within_the_limit_still_open(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4096, 2048)).save(tmp_path / "ok.png")
    with open_image(tmp_path / "ok.png") as image:
        assert image.size == (4096, 2048)
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageInputError, match="not an image"):
        open_image(tmp_path / "text.png")


# ------------------------------------------------------------------------------------------ fuzzing the job API
FUZZ_SEED = 20260113
FUZZ_REQUESTS = 250
FUZZ_SECONDS = 45.0
NASTY_STRINGS = ["", " ", "\ud800", "a\udfffb", "\0", "../../etc/passwd", "/etc/passwd", "~/.bashrc", "None",
                 "💥" * 50, "x" * 30_000, "%2e%2e/", "1152*896", "64*64", "99999999999*8", "<lora:x:1e308>",
                 "embedding:../../x", "__../../x__", "{prompt}", "Fooocus V2", "dpmpp_2m_sde_gpu", "karras"]


def _fuzz_value(rng: random.Random, schema: dict, defs: dict, depth: int = 0) -> object:
    """A value for ``schema``: mostly near its bounds or of its type, sometimes of another type entirely."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        schema = rng.choice(schema["anyOf"])
    if rng.random() < 0.1 or depth > 3:
        return rng.choice([None, True, -1, 2**70, -(2**70), 1e308, -0.0, "x", [], {}, [[[]]], {"a": {"b": 1}}])
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        choices = schema.get("enum", [schema.get("const")])
        return rng.choice([*choices, "nope"])
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
        picks = [low, high, low - 1, high + 1, (low + high) / 2, 10**9, -(10**9), 0, 1, 8, 64, 4096, 4104]
        value = rng.choice(picks)
        return int(value) if kind == "integer" and rng.random() < 0.9 else value
    if kind == "boolean":
        return rng.choice([True, False, "yes", 1, None])
    if kind == "string":
        return rng.choice(NASTY_STRINGS)
    if kind == "array":
        return [_fuzz_value(rng, schema.get("items", {}), defs, depth + 1) for _ in range(rng.choice([0, 1, 2, 40]))]
    if kind == "object":
        properties = schema.get("properties", {})
        names = rng.sample(sorted(properties), k=rng.randint(0, len(properties))) if properties else []
        value = {name: _fuzz_value(rng, properties[name], defs, depth + 1) for name in names}
        if rng.random() < 0.05:
            value["unexpected"] = 1
        return value
    return rng.choice(NASTY_STRINGS)


def test_fuzzing_the_job_api_never_gives_a_5xx(tmp_path: Path) -> None:
    rng = random.Random(FUZZ_SEED)
    schema = GenerationTask.model_json_schema()
    defs = schema.get("$defs", {})
    stub = StubEngine(tmp_path / "out")
    statuses: dict[int, int] = {}
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        deadline = time.monotonic() + FUZZ_SECONDS
        queued: list[str] = []
        for number in range(FUZZ_REQUESTS):
            if time.monotonic() > deadline:
                break
            if rng.random() < 0.25:  # anything the schema's shape allows, mostly invalid
                task = _fuzz_value(rng, schema, defs)
            else:  # a valid small task with one to three fields fuzzed, so the bad value is what is judged
                task = {"aspect_ratio": "64*64", "steps": 2, "image_number": 1, "styles": []}
                for name in rng.sample(sorted(schema["properties"]), k=rng.randint(1, 3)):
                    task[name] = _fuzz_value(rng, schema["properties"][name], defs, 1)
            body = {"task": task, "priority": rng.choice([0, 0, 0, 5, -(10**7), "x"])} if rng.random() < 0.9 else task
            encoded = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
            if queued and rng.random() < 0.3:
                response = client.patch(f"/v1/jobs/{rng.choice(queued)}", content=encoded,
                                        headers={"Content-Type": "application/json"})
            else:
                response = client.post("/v1/jobs", content=encoded, headers={"Content-Type": "application/json"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (number, body, response.text[:500])
            if response.status_code == 201:
                queued.append(response.json()["id"])
        assert sum(statuses.values()) >= 50, statuses  # it really ran
        assert statuses.get(422, 0) > 0 and statuses.get(201, 0) > 0, statuses  # both sides were exercised
        assert client.get("/v1/health").json()["status"] == "ok"
        listed = client.get("/v1/jobs", params={"limit": 1000})
        assert listed.status_code == 200 and len(listed.json()) == len(queued)
        for job_id in queued:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200


# ------------------------------------------------------------------------------------------ 9. UI defects
def test_the_served_ui_selects_its_preset(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_service(tmp_path, stub) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        config = client.get("/config")
        assert config.status_code == 200
        (dropdown,) = [c for c in config.json()["components"] if c.get("props", {}).get("elem_id") == "foci-preset"]
        assert dropdown["props"]["value"] == "default"
        assert ["default", "default"] in [list(choice) for choice in dropdown["props"]["choices"]]


def test_a_download_without_connection_gives_advice(tmp_path: Path) -> None:
    from foci.engine.engine import Engine, GenerationError
    from foci.files.downloads import Downloader, load_catalogue

    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    engine = Engine(models_dir=tmp_path / "models", output_dir=tmp_path / "out", device="cpu",
                    downloader=Downloader(mirror=dead, retries=0, backoff=0), accept_paths=False)
    name = "juggernautXL_v8Rundiffusion.safetensors"
    assert name in {entry.file_name for entry in load_catalogue().values()}
    with pytest.raises(GenerationError) as caught:
        engine.resolve("checkpoints", name)
    message = str(caught.value)
    assert message == f"no connection to 127.0.0.1 — set --hf-mirror or put {name} in " \
                      f"{(tmp_path / 'models' / 'checkpoints').as_posix()}/"
    assert "Errno" not in message


def test_a_failed_job_shows_the_advice_not_the_resolver_error(tmp_path: Path) -> None:
    from foci.files.download_hints import download_failure_message

    try:
        try:
            raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
        except urllib.error.URLError as reason:
            raise RuntimeError("could not download x.safetensors from https://huggingface.co/x: cannot connect: "
                               "[Errno -2] Name or service not known") from reason
    except RuntimeError as error:
        assert download_failure_message(error, url="https://huggingface.co/a/b/x.safetensors",
                                        file_name="x.safetensors", folder="models/checkpoints") == \
            "no connection to huggingface.co — set --hf-mirror or put x.safetensors in models/checkpoints/"
    http_error = urllib.error.HTTPError("https://huggingface.co/x", 404, "Not Found", None, None)  # type: ignore[arg-type]
    assert download_failure_message(http_error, url="https://huggingface.co/x", file_name="x",
                                    folder="models") == str(http_error)


# ------------------------------------------------------------------------------------------ 7. model kinds
def _sd15_text_encoder_file(path: Path) -> Path:
    """A small file in the SD1.x checkpoint layout (CLIP text encoder under ``cond_stage_model.transformer.``)."""
    from safetensors.torch import save_file

    tensors = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(100, 32),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(32),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}
    save_file(tensors, str(path))
    return path


def test_a_file_of_another_kind_is_refused_as_vae_over_http(tmp_path: Path, tiny_models_dir: Path) -> None:
    from foci.engine.engine import Engine

    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "checkpoints").symlink_to(tiny_models_dir / "checkpoints")
    _sd15_text_encoder_file(models / "vae" / "sd15-clip.safetensors")
    (models / "vae" / "notes.safetensors").write_text("just some text")
    real = Engine(models_dir=models, output_dir=tmp_path / "out", device="cpu", precision="fp32",
                  accept_paths=False)
    with run_api(tmp_path, real, settings=tiny_settings(models)) as api, \
            httpx.Client(base_url=api.url, timeout=60) as client:
        for vae, expected in (("sd15-clip.safetensors", "Stable Diffusion 1.x checkpoint; expected a VAE file"),
                              ("notes.safetensors", "not a valid safetensors file")):
            job = client.post("/v1/jobs", json={"task": {"prompt": "a cat", "vae": vae, "steps": 1, "styles": [],
                                                         "image_number": 1, "aspect_ratio": "64*64",
                                                         "base_model": "tiny-base.safetensors"}})
            assert job.status_code == 201, job.text
            final = wait_final(client, job.json()["id"], timeout=120)
            assert final["state"] == "failed" and expected in final["error"], final["error"]
            assert "\n" not in final["error"] and "Traceback" not in final["error"]
        assert client.get("/v1/health").json()["status"] == "ok"


def test_a_vae_approx_that_is_not_one_falls_back_to_plain_previews(tmp_path: Path) -> None:
    from foci.models.vae_approx import VaeApproxError, load_vae_approx

    stub = StubEngine(tmp_path / "out")
    approx = stub.folders.download_folder("vae_approx")
    approx.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("a\nb\n")
    (approx / "xlvaeapp.pth").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(VaeApproxError, match="not a readable torch file"):
        load_vae_approx(approx / "xlvaeapp.pth")
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", json={"task": {"prompt": "a cat", "steps": 3, "styles": [], "image_number": 1,
                                                     "aspect_ratio": "64*64"}})
        assert wait_final(client, job.json()["id"])["state"] == "done"
        assert client.get("/v1/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------------------ 6. memory bombs
BIG = 1 << 20  # factors of this size multiply out to 2^40 elements (4 TiB in float32)


def _bomb_loras(tiny_checkpoint: Path, folder: Path) -> list[str]:
    """LoRA files whose factors are small on disk but whose products are enormous, aimed at a real tiny layer."""
    from safetensors.torch import save_file

    from tests.engine.test_presets_e2e import tiny_lora_tensors

    layer = next(key for key in tiny_lora_tensors(tiny_checkpoint) if key.startswith("lora_unet_")).split(".")[0]
    save_file({f"{layer}.lora_up.weight": torch.zeros(BIG, 1, dtype=torch.float16),
               f"{layer}.lora_down.weight": torch.zeros(1, BIG, dtype=torch.float16)},
              str(folder / "matmul.safetensors"))
    save_file({f"{layer}.lokr_w1": torch.zeros(1024, 1024, dtype=torch.float16),
               f"{layer}.lokr_w2": torch.zeros(1024, 1024, dtype=torch.float16)}, str(folder / "lokr.safetensors"))
    torch.save({f"{layer}.lora_up.weight": torch.zeros(1).expand(BIG, BIG),
                f"{layer}.lora_down.weight": torch.zeros(1).expand(BIG, BIG)}, folder / "strided.pt")
    return ["matmul.safetensors", "lokr.safetensors", "strided.pt"]


def test_lora_bombs_are_refused_before_allocating_over_http(tmp_path: Path, tiny_models_dir: Path,
                                                            tiny_checkpoint: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from foci.engine.engine import Engine

    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "checkpoints").symlink_to(tiny_models_dir / "checkpoints")
    names = _bomb_loras(tiny_checkpoint, models / "loras")
    real = Engine(models_dir=models, output_dir=tmp_path / "out", device="cpu", precision="fp32",
                  accept_paths=False)
    with run_api(tmp_path, real, settings=tiny_settings(models)) as api, \
            httpx.Client(base_url=api.url, timeout=60) as client:
        for name in names:
            job = client.post("/v1/jobs", json={"task": {"prompt": "a cat", "steps": 1, "styles": [], "image_number": 1,
                                                         "aspect_ratio": "64*64", "loras": [{"name": name}],
                                                         "base_model": "tiny-base.safetensors"}})
            assert job.status_code == 201, job.text
            final = wait_final(client, job.json()["id"], timeout=120)
            assert final["state"] in ("done", "failed"), final
            assert "alloc" not in (final["error"] or "")
        assert client.get("/v1/health").json()["status"] == "ok"
    refused = caplog.text
    assert "does not fit the parameter" in refused and "refused before computing it" in refused
    assert "stores only 1" in refused  # the zero-stride pickle, named by its tensor


def test_pickled_zero_stride_tensors_are_refused_everywhere(tmp_path: Path) -> None:
    from foci.models.checkpoint import CorruptFileError, read_tensor_shapes
    from foci.text.embeddings import EmbeddingLookup

    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1).expand(BIG, BIG)},
               tmp_path / "checkpoint.ckpt")
    with pytest.raises(CorruptFileError, match="input_blocks.0.0.weight.*stores only 1"):
        read_tensor_shapes(tmp_path / "checkpoint.ckpt")
    torch.save({"clip_l": torch.zeros(1).expand(BIG, 768), "clip_g": torch.zeros(4, 1280)}, tmp_path / "bomb.pt")
    torch.save({"clip_l": torch.zeros(10_000, 768)}, tmp_path / "long.pt")
    lookup = EmbeddingLookup([tmp_path])
    assert lookup.get("bomb", "clip_l") is None and lookup.get("bomb", "clip_g").shape == (4, 1280)
    assert lookup.get("long", "clip_l") is None
