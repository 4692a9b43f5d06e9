"""The launcher: `foci` serves UI + API from one process, refuses non-loopback without credentials."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from foci.apps.cli import main
from tests.http_fixtures import FileServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str, data: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def test_listening_beyond_loopback_without_credentials_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["--listen", "--no-browser", "--no-download", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to listen on 0.0.0.0 without credentials" in err
    assert not (tmp_path / "jobs.sqlite3").exists()  # refused before anything was opened


DEFAULT_MODEL = "juggernautXL_v8Rundiffusion.safetensors"
OFFSET_LORA = "sd_xl_offset_example-lora_1.0.safetensors"


def test_foci_with_empty_models_downloads_the_default_preset_then_generates(tiny_checkpoint: Path,
                                                                              tmp_path: Path) -> None:
    """Issue 4's done-when: `foci` fetches exactly what the default preset needs (here from a loopback mirror),
    then serves UI + API, and a job with the preset's defaults (styles with expansion, offset LoRA) completes."""
    from safetensors.torch import save_file

    from tests.engine.test_presets_e2e import tiny_expansion_files, tiny_lora_tensors

    lora_file = tmp_path / "lora.safetensors"
    save_file(tiny_lora_tensors(tiny_checkpoint), str(lora_file))
    expansion = tiny_expansion_files()
    served = {
        f"/lllyasviel/fav_models/resolve/main/fav/{DEFAULT_MODEL}": tiny_checkpoint.read_bytes(),
        f"/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{OFFSET_LORA}": lora_file.read_bytes(),
        "/lllyasviel/misc/resolve/main/fooocus_expansion.bin": expansion["pytorch_model.bin"],
        "/lllyasviel/misc/resolve/main/positive.txt": expansion["positive.txt"],
    }
    folders = {DEFAULT_MODEL: "checkpoints", OFFSET_LORA: "loras", "fooocus_expansion.bin": "prompt_expansion",
               "positive.txt": "prompt_expansion"}
    entries = []
    for path, data in served.items():
        name = path.rsplit("/", 1)[1]
        entries.append({"name": name, "url": "https://huggingface.co" + path, "folder": folders[name],
                        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "licence": "test",
                        "presets": ["always"] if folders[name] == "prompt_expansion" else ["default"],
                        "save_as": "pytorch_model.bin" if name.endswith(".bin") else None})
    (tmp_path / "catalogue.json").write_text(json.dumps({"format": 1, "about": "test", "entries": entries}))
    config_dir = tmp_path / "models" / "prompt_expansion" / "fooocus_expansion"
    config_dir.mkdir(parents=True)
    (config_dir / "config.json").write_bytes(expansion["config.json"])  # tiny GPT-2 instead of stock GPT-2 small

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "FOCI_OFFLINE"}
    env |= {"PYTHONUNBUFFERED": "1", "FOCI_CATALOGUE": str(tmp_path / "catalogue.json")}
    base = f"http://127.0.0.1:{port}"
    with FileServer(served) as mirror:
        process = subprocess.Popen(
            [sys.executable, "-m", "foci.apps.cli", "--no-browser", "--port", str(port), "--hf-mirror", mirror.base_url,
             "--precision", "fp32", "--device", "cpu"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            banner = _read_banner(process)
            assert f"running at {base}/" in banner
            assert sorted(r.path for r in mirror.requests) == sorted(served)  # exactly the preset's files
            assert DEFAULT_MODEL in banner  # download progress was shown
            assert (tmp_path / "models" / "checkpoints" / DEFAULT_MODEL).read_bytes() == served[
                f"/lllyasviel/fav_models/resolve/main/fav/{DEFAULT_MODEL}"]
            for _ in range(100):  # uvicorn binds just after the banner
                try:
                    status, page = fetch(base + "/")
                    break
                except OSError:
                    time.sleep(0.2)
            assert status == 200 and b"gradio" in page.lower()
            assert fetch(base + "/v1/health")[0] == 200
            task = {"prompt": "a cat", "aspect_ratio": "64*64", "steps": 2, "image_number": 1, "seed": 11}
            status, body = fetch(base + "/v1/jobs", {"task": task})
            assert status == 201
            job = json.loads(body)
            for _ in range(300):
                job = json.loads(fetch(f"{base}/v1/jobs/{job['id']}")[1])
                if job["state"] in ("done", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            assert job["state"] == "done", job
            assert job["task"]["styles"] == ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"]
            (image,) = job["images"]
            status, png = fetch(f"{base}/v1/images/{image['path']}")
            assert status == 200 and png.startswith(b"\x89PNG")
            status, meta = fetch(base + "/v1/jobs?state=done")
            assert status == 200 and len(json.loads(meta)) == 1
            assert (tmp_path / "jobs.sqlite3").is_file()  # the queue persists next to the app
        finally:
            _stop(process)


def _serve_until_banner(tmp_path: Path, argv: list[str], env: dict[str, str]) -> str:
    """Start `foci` (serve) in tmp_path, return its output up to the "running at" banner, then stop it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "foci.apps.cli", "--no-browser", "--port", str(port), *argv],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return _read_banner(process)
    finally:
        _stop(process)


def _read_banner(process: subprocess.Popen, seconds: float = 120) -> str:
    """The server's output up to its "running at" banner (asserting it does not exit before)."""
    deadline = time.monotonic() + seconds
    banner = ""
    while time.monotonic() < deadline and "running at" not in banner:
        line = process.stdout.readline()
        assert line or process.poll() is None, banner
        banner += line
    return banner


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_start_fetches_every_file_it_can_and_reports_all_failures_at_once(tiny_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    """Issue 16.3: the first failed file no longer stops the start-up download; the checkpoint is fetched at start
    and every failure is listed with what to do."""
    checkpoint = tiny_checkpoint.read_bytes()
    served = {f"/lllyasviel/fav_models/resolve/main/fav/{DEFAULT_MODEL}": checkpoint}
    entries = [  # the expansion files come first and are missing on the mirror (404)
        {"name": "fooocus_expansion.bin", "url": "https://huggingface.co/lllyasviel/misc/resolve/main/f.bin",
         "folder": "prompt_expansion", "size": 1234, "sha256": None, "licence": "test", "presets": ["always"],
         "save_as": "pytorch_model.bin"},
        {"name": OFFSET_LORA, "url": f"https://huggingface.co/x/resolve/main/{OFFSET_LORA}", "folder": "loras",
         "size": None, "sha256": None, "licence": "test", "presets": ["default"]},
        {"name": DEFAULT_MODEL, "url": "https://huggingface.co" + next(iter(served)), "folder": "checkpoints",
         "size": len(checkpoint), "sha256": hashlib.sha256(checkpoint).hexdigest(), "licence": "test",
         "presets": ["default"]},
    ]
    (tmp_path / "catalogue.json").write_text(json.dumps({"format": 1, "about": "test", "entries": entries}))
    env = {key: value for key, value in os.environ.items() if key != "FOCI_OFFLINE"}
    env |= {"PYTHONUNBUFFERED": "1", "FOCI_CATALOGUE": str(tmp_path / "catalogue.json")}
    with FileServer(served) as mirror:
        banner = _serve_until_banner(tmp_path, ["--hf-mirror", mirror.base_url, "--device", "cpu"], env)
        requested = sorted(r.path for r in mirror.requests)
    assert requested == sorted(["/lllyasviel/misc/resolve/main/f.bin", f"/x/resolve/main/{OFFSET_LORA}",
                                *served]), banner
    assert (tmp_path / "models" / "checkpoints" / DEFAULT_MODEL).read_bytes() == checkpoint
    assert "2 model file(s) are missing" in banner, banner
    expansion_folder = (tmp_path / "models" / "prompt_expansion" / "fooocus_expansion").as_posix()
    assert "pytorch_model.bin (1.2 kB): HTTP 404" in banner and f"into {expansion_folder}/" in banner
    assert f"{OFFSET_LORA}: HTTP 404" in banner and f"into {(tmp_path / 'models' / 'loras').as_posix()}/" in banner
    assert "--hf-mirror" in banner and "--offline" in banner


# ------------------------------------------------------------------------------- credentials on every route
def _route_targets(app) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of the app and of the apps mounted in it, path parameters filled in."""
    import re

    from starlette.routing import Mount, Route

    targets: list[tuple[str, str]] = []

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif hasattr(route, "original_router"):  # FastAPI >= 0.165 keeps an included router as one entry
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Route):
                path = re.sub(r"\{[^}]+\}", "x", prefix + route.path) or "/"
                targets.extend((method, path) for method in sorted(route.methods or {"GET"}) if method != "HEAD")

    walk(app.routes, "")
    return sorted(set(targets))


def test_every_route_takes_the_same_credentials(tiny_models_dir: Path, tmp_path: Path) -> None:
    """Issue 17.5: API, UI, /history and /docs with none, wrong and each kind of valid credentials."""
    import base64
    import threading

    import httpx
    import uvicorn

    from foci.apps.serve import PUBLIC_PATHS, build_service
    from foci.engine.engine import Engine
    from foci.service.auth import add_api_key, add_user
    from foci.settings.config import FociSettings

    auth_file = tmp_path / "auth.json"
    key = add_api_key(auth_file, "ci")
    add_user(auth_file, "ana", "secret")
    engine = Engine(models_dir=tiny_models_dir, output_dir=tmp_path / "out", device="cpu", precision="fp32")
    service = build_service(settings=FociSettings(), engines=[engine], root=tmp_path, listen_host="0.0.0.0",
                            auth_file=auth_file)
    targets = _route_targets(service.app)
    paths = {path for _, path in targets}
    assert {"/", "/history", "/history/image/x/x", "/docs", "/openapi.json", "/v1/health", "/v1/jobs"} <= paths
    assert len(targets) > 30  # the Gradio app's own routes are walked too

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    wrong = [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, basic("ana", "nope"), basic("bob", "secret"),
             {"Authorization": "Basic %%%"}, {"Authorization": "Digest x"}]
    valid = [{"Authorization": f"Bearer {key}"}, {"X-API-Key": key}, basic("ana", "secret"), basic("laptop", key)]
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            refusal = (401, b'{"detail":"missing or invalid credentials"}')

            def answer(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
                with client.stream(method, path, headers=headers) as response:  # event streams: status only
                    return response.status_code, response.read() if response.status_code == 401 else b""

            for method, path in targets:
                for headers in wrong:
                    got = answer(method, path, headers)
                    if path in PUBLIC_PATHS:
                        assert got[0] == 200, (method, path, headers, got)
                    else:
                        assert got == refusal, (method, path, headers, got)
                for headers in valid:  # past the guard (Gradio's own "sign in to use run history" 401 aside)
                    got = answer(method, path, headers)
                    assert got != refusal, (method, path, headers, got)
            for path in ("/", "/history", "/docs", "/openapi.json", "/v1/health", "/v1/jobs", "/config"):
                for headers in valid:
                    assert answer("GET", path, headers)[0] == 200, (path, headers)
            page = client.get("/history", headers=basic("ana", "secret"))
            assert "Recent jobs" in page.text
            refused = client.get("/history")
            assert refused.json() == {"detail": "missing or invalid credentials"}
            assert 'Basic realm="foci"' in refused.headers["www-authenticate"]
    finally:
        server.should_exit = True
        thread.join(20)
        service.close()


def test_start_up_files_include_the_configured_default_checkpoint(tmp_path: Path) -> None:
    from foci.apps.serve import startup_files
    from foci.settings.config import FociSettings

    settings = FociSettings(default_model="animaPencilXL_v500.safetensors", path_checkpoints=[tmp_path])
    names = startup_files(settings, "default")
    assert DEFAULT_MODEL in names and "animaPencilXL_v500.safetensors" in names and OFFSET_LORA in names
    assert "fooocus_expansion_positive.txt" in names
    (tmp_path / "mine.safetensors").write_bytes(b"x")  # a present previous default stands in for a missing one
    settings = FociSettings(default_model="animaPencilXL_v500.safetensors", path_checkpoints=[tmp_path],
                            previous_default_models=["mine.safetensors"])
    assert "animaPencilXL_v500.safetensors" not in startup_files(settings, "anime")
    assert startup_files(FociSettings(default_model=DEFAULT_MODEL), "my_own_preset") == [DEFAULT_MODEL]
