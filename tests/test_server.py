"""The launcher: `foci` serves UI + API from one process, refuses non-loopback without credentials."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from foci.cli import main


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


def test_foci_command_serves_ui_and_api_and_generates(tiny_models_dir: Path, tiny_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FOCI_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "foci.cli", "--no-browser", "--no-download", "--port", str(port), "--models-dir",
         str(tiny_models_dir), "--output-dir", str(tmp_path / "outputs"), "--precision", "fp32", "--device", "cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        banner = ""
        while time.monotonic() < deadline and "running at" not in banner:
            line = process.stdout.readline()
            assert line or process.poll() is None, banner
            banner += line
        assert f"running at {base}/" in banner
        for _ in range(100):  # uvicorn binds just after the banner
            try:
                status, page = fetch(base + "/")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and b"gradio" in page.lower()
        assert fetch(base + "/v1/health")[0] == 200
        task = {"prompt": "a cat", "base_model": str(tiny_checkpoint), "aspect_ratio": "64*64", "steps": 2,
                "image_number": 1, "styles": [], "loras": [], "seed": 11}
        status, body = fetch(base + "/v1/jobs", {"task": task})
        assert status == 201
        job = json.loads(body)
        for _ in range(300):
            job = json.loads(fetch(f"{base}/v1/jobs/{job['id']}")[1])
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.2)
        assert job["state"] == "done", job
        (image,) = job["images"]
        status, png = fetch(f"{base}/v1/images/{image['path']}")
        assert status == 200 and png.startswith(b"\x89PNG")
        assert (tmp_path / "jobs.sqlite3").is_file()  # the queue persists next to the app
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
