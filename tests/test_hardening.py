"""Issue 13: what a hostile request or file could do to Foci, each class tested over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from foci.task import GenerationTask
from tests.test_api import StubEngine, run_api

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
        listed = client.get("/v1/jobs")
        assert listed.status_code == 200 and [job["id"] for job in listed.json()] == [job_id]
        assert listed.json()[0]["task"]["prompt"] == "ok"
        assert client.get("/v1/health").json()["status"] == "ok"
