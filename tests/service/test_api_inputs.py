"""Input images and masks over the REST API (issue 10): base64 in JSON, multipart file parts, stored hashes, the
restart of a server with queued jobs, and every kind of bad upload — all over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.test_api import TINY, StubEngine, run_api, wait_final
from tests.service.test_hardening import png_header_only

VARY = {**TINY, "image_number": 1, "uov_method": "Vary (Subtle)"}
INPAINT = {**TINY, "image_number": 1, "inpaint_method": "Improve Detail (face, hand, eyes, etc.)",
           "inpaint_strength": 0.4, "mask_dilate": 3}


def png_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def noisy_rgb(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def mask_png(width: int = 48, height: int = 32) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[8:24, 12:36] = 255
    return png_bytes(Image.fromarray(mask, "L"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def stored_files(stub: StubEngine) -> list[str]:
    folder = stub.output_dir / "inputs"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------ the three ways in
def test_a_json_job_with_base64_images_is_stored_by_hash_and_run(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    image = png_bytes(noisy_rgb())
    mask = mask_png()
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        vary = client.post("/v1/jobs", json={"task": VARY, "input_image_base64": b64(image)})
        assert vary.status_code == 201, vary.text
        assert vary.json()["task"]["input_image"] == sha256(image)
        assert vary.json()["task"]["uov_method"] == "Vary (Subtle)"

        # a data: URL, with line breaks as some encoders write them; a mask as a data: URL too
        wrapped = "\n".join(b64(image)[i:i + 76] for i in range(0, len(b64(image)), 76))
        inpaint = client.post("/v1/jobs", json={"task": INPAINT,
                                                "input_image_base64": "data:image/png;base64," + wrapped,
                                                "inpaint_mask_base64": "data:image/png;base64," + b64(mask)})
        assert inpaint.status_code == 201, inpaint.text
        task = inpaint.json()["task"]
        assert (task["input_image"], task["inpaint_mask"]) == (sha256(image), sha256(mask))
        assert (task["inpaint_strength"], task["mask_dilate"]) == (0.4, 3)

        for job in (vary.json(), inpaint.json()):
            assert wait_final(client, job["id"])["state"] == "done"
        assert stub.inputs_seen == [("input_image", (48, 32), "RGB"), ("input_image", (48, 32), "RGB"),
                                    ("inpaint_mask", (48, 32), "L")]
        assert stored_files(stub) == sorted([f"{sha256(image)}.png", f"{sha256(mask)}.png"])  # each once
        fetched = client.get(f"/v1/inputs/{sha256(mask)}")
        assert fetched.status_code == 200 and fetched.content == mask
        assert fetched.headers["content-type"] == "image/png"
        assert client.get(f"/v1/inputs/{'0' * 64}").status_code == 404
        assert client.get("/v1/inputs/..%2Fjobs.sqlite3").status_code == 404


def test_a_multipart_job_with_file_parts(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    image = png_bytes(noisy_rgb(64, 40, seed=1))
    mask = mask_png(32, 20)  # another size than the image: the engine resizes it, the API takes it
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        response = client.post("/v1/jobs", data={"job": json.dumps({"task": INPAINT, "priority": 3})},
                               files={"input_image": ("photo.png", image, "image/png"),
                                      "inpaint_mask": ("mask.png", mask, "image/png")})
        assert response.status_code == 201, response.text
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert (job["task"]["input_image"], job["task"]["inpaint_mask"], job["priority"]) == (
            sha256(image), sha256(mask), 3)
        assert wait_final(client, job["id"])["state"] == "done"
        assert stub.inputs_seen == [("input_image", (64, 40), "RGB"), ("inpaint_mask", (32, 20), "L")]

        # the job JSON may itself be a file part (curl -F job=@job.json); outpaint needs no mask
        outpaint = client.post("/v1/jobs", files={
            "job": ("job.json", json.dumps({"task": {**TINY, "outpaint": ["Left", "Top"]}}), "application/json"),
            "input_image": ("photo.png", image, "image/png")})
        assert outpaint.status_code == 201, outpaint.text
        assert outpaint.json()["task"]["outpaint"] == ["Left", "Top"]
        assert outpaint.json()["task"]["input_image"] == sha256(image)


def test_a_stored_hash_is_reused_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    image = png_bytes(noisy_rgb(seed=2))
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        first = client.post("/v1/inputs", files={"file": ("x.png", image, "image/png")})
        assert first.status_code == 201, first.text
        assert first.json() == {"sha256": sha256(image), "format": "PNG", "width": 48, "height": 32,
                                "bytes": len(image)}
        assert first.headers["location"] == f"/v1/inputs/{sha256(image)}"
        again = client.post("/v1/inputs", content=image, headers={"Content-Type": "image/png"})
        assert again.status_code == 200 and again.json()["sha256"] == sha256(image)

        reused = client.post("/v1/jobs", json={"task": {**VARY, "input_image": sha256(image)}})
        assert reused.status_code == 201, reused.text
        # the hash the job reports can be given again (with the very same upload it is no conflict either)
        same = client.post("/v1/jobs", json={"task": {**VARY, "input_image": sha256(image)},
                                             "input_image_base64": b64(image)})
        assert same.status_code == 201, same.text

        unknown = "ab" * 32
        missing = client.post("/v1/jobs", json={"task": {**VARY, "input_image": unknown}})
        assert missing.status_code == 422
        assert missing.json()["detail"] == f"task.input_image: no input image {unknown} is stored; upload the " \
                                           "image again"
        other = png_bytes(noisy_rgb(seed=3))
        conflict = client.post("/v1/jobs", json={"task": {**VARY, "input_image": sha256(image)},
                                                 "input_image_base64": b64(other)})
        assert conflict.status_code == 422 and "is not the hash of the input_image_base64" in conflict.text
        twice = client.post("/v1/jobs", data={"job": json.dumps({"task": VARY, "input_image_base64": b64(image)})},
                            files={"input_image": ("x.png", image, "image/png")})
        assert twice.status_code == 422 and "give the image once" in twice.text
        unused = client.post("/v1/jobs", json={"task": TINY, "input_image_base64": b64(image)})
        assert unused.status_code == 422 and "input_image is given but not used" in unused.text
        mask_only = client.post("/v1/jobs", json={"task": TINY, "inpaint_mask_base64": b64(mask_png())})
        assert mask_only.status_code == 422 and "need an input_image" in mask_only.text
        assert {job["id"] for job in client.get("/v1/jobs").json()} == {same.json()["id"], reused.json()["id"]}
        assert stored_files(stub) == [f"{sha256(image)}.png"]  # nothing kept from the refused jobs


def test_a_queued_job_gets_new_images_by_patch(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    image, mask = png_bytes(noisy_rgb(seed=4)), mask_png()
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", json={"task": VARY, "input_image_base64": b64(image)}).json()
        patched = client.patch(f"/v1/jobs/{job['id']}", data={"job": json.dumps({"task": {
            "uov_method": "Disabled", "inpaint_method": "Modify Content (add objects, change background, etc.)"}})},
            files={"inpaint_mask": ("m.png", mask, "image/png")})
        assert patched.status_code == 200, patched.text
        task = patched.json()["task"]
        assert (task["input_image"], task["inpaint_mask"], task["uov_method"]) == (sha256(image), sha256(mask),
                                                                                 "Disabled")
        other = png_bytes(noisy_rgb(seed=5))
        replaced = client.patch(f"/v1/jobs/{job['id']}", json={"input_image_base64": b64(other)})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["task"]["input_image"] == sha256(other)
        assert replaced.json()["task"]["seed"] == job["task"]["seed"]
        bad = client.patch(f"/v1/jobs/{job['id']}", json={"input_image_base64": "not base64!"})
        assert bad.status_code == 422
        assert client.get(f"/v1/jobs/{job['id']}").json()["task"]["input_image"] == sha256(other)


# ------------------------------------------------------------------------------------------ restart
def test_a_queued_job_keeps_its_images_across_a_restart(tmp_path: Path) -> None:
    image, mask = png_bytes(noisy_rgb(56, 40, seed=6)), mask_png(56, 40)
    with run_api(tmp_path, StubEngine(tmp_path / "out"), with_worker=False) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        job = client.post("/v1/jobs", data={"job": json.dumps({"task": INPAINT})},
                          files={"input_image": ("a.png", image, "image/png"),
                                 "inpaint_mask": ("m.png", mask, "image/png")}).json()
        assert job["state"] == "queued"
    # the server is gone, its job still queued; a new one on the same folders runs it with its images
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        done = wait_final(client, job["id"])
        assert done["state"] == "done", done
        assert done["task"]["input_image"] == sha256(image) and done["task"]["inpaint_mask"] == sha256(mask)
        assert stub.inputs_seen == [("input_image", (56, 40), "RGB"), ("inpaint_mask", (56, 40), "L")]
        assert client.get(f"/v1/inputs/{sha256(image)}").content == image


# ------------------------------------------------------------------------------------------ bad input
def truncated_png() -> bytes:
    whole = png_bytes(noisy_rgb(64, 64, seed=7))
    return whole[: len(whole) // 2]


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    noisy_rgb(64, 64, seed=8).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BAD_UPLOADS = [  # (name, bytes, status, words in the message)
    ("text file", b"hello, I am not an image\n" * 20, 415, "not an image file"),
    ("zip archive", b"PK\x03\x04" + bytes(200), 415, "not an image file"),
    ("100-Mpx PNG header", png_header_only(10_000, 10_000), 413, "Mpx"),
    ("truncated PNG", truncated_png(), 422, "damaged or truncated"),
    ("truncated JPEG", truncated_jpeg(), 422, "damaged or truncated"),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("name", "data", "status", "words"), BAD_UPLOADS, ids=[case[0] for case in BAD_UPLOADS])
def test_bad_uploads_are_refused_and_lose_nothing(tmp_path: Path, name: str, data: bytes, status: int,
                                                  words: str) -> None:
    stub = StubEngine(tmp_path / "out")
    good = png_bytes(noisy_rgb(seed=9))
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        kept = client.post("/v1/jobs", json={"task": VARY, "input_image_base64": b64(good)}).json()
        attempts = {
            "json": client.post("/v1/jobs", json={"task": VARY, "input_image_base64": b64(data)}),
            "multipart": client.post("/v1/jobs", data={"job": json.dumps({"task": VARY})},
                                     files={"input_image": ("x.png", data, "image/png")}),
            "mask": client.post("/v1/jobs", data={"job": json.dumps({"task": INPAINT})},
                                files={"input_image": ("x.png", good, "image/png"),
                                       "inpaint_mask": ("m.png", data, "image/png")}),
            "inputs": client.post("/v1/inputs", files={"file": ("x.png", data, "image/png")}),
            "patch": client.patch(f"/v1/jobs/{kept['id']}", json={"input_image_base64": b64(data)}),
        }
        for how, response in attempts.items():
            assert response.status_code == status, (how, response.status_code, response.text)
            detail = response.json()["detail"]
            assert words in detail and str(tmp_path) not in detail, (how, detail)
        assert "inpaint_mask" in attempts["mask"].json()["detail"]
        assert "input_image_base64" in attempts["json"].json()["detail"]
        assert [job["id"] for job in client.get("/v1/jobs").json()] == [kept["id"]]
        assert client.get(f"/v1/jobs/{kept['id']}").json()["task"] == kept["task"]
        assert stored_files(stub) == [f"{sha256(good)}.png"]
        assert client.get("/v1/health").json()["status"] == "ok"


@pytest.mark.parametrize(("text", "words"), [
    ("iVBORw0KGgo%%%%", "not valid base64"), ("iVBORw0KGgoA" + "A" * 5, "not valid base64"),
    ("data:image/png,iVBORw0KGgo", "must be base64"), ("data:image/png;base64,", "empty"),
    ("ü" * 8, "not valid base64"), ("   ", "empty"),
])
def test_corrupt_base64_is_422(tmp_path: Path, text: str, words: str) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        response = client.post("/v1/jobs", json={"task": VARY, "input_image_base64": text})
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"] and "input_image_base64" in response.json()["detail"]
        assert client.get("/v1/jobs").json() == []


def test_wrong_bodies_and_parts_are_clear_errors(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    image = png_bytes(noisy_rgb(seed=10))
    with run_api(tmp_path, stub, with_worker=False, max_upload_bytes=64 << 10) as api, \
            httpx.Client(base_url=api.url, timeout=30) as client:
        cases = [
            (client.post("/v1/jobs", content=b"prompt=a cat", headers={"Content-Type": "text/plain"}), 415,
             "application/json"),
            (client.post("/v1/jobs", data={"task": json.dumps(VARY)}, files={"input_image": ("x.png", image)}),
             422, "unknown form part 'task'"),
            (client.post("/v1/jobs", files={"job": (None, json.dumps({"task": VARY})), "input_image": (None, b64(
                image))}), 422, "send the image as a file part"),
            (client.post("/v1/jobs", data={"job": json.dumps({"task": VARY})}), 415, "multipart/form-data"),
            (client.post("/v1/jobs", data={"job": "{oops"}, files={"input_image": ("x.png", image)}), 422,
             "not valid JSON"),
            (client.post("/v1/jobs", data={"job": json.dumps({"task": {**VARY, "uov_method": "Vary (Wild)"}})},
                         files={"input_image": ("x.png", image)}), 422, "task.uov_method"),
            (client.post("/v1/jobs", files={"input_image": ("x.png", image)}), 422, "input_image is given but not "
             "used"),
            # bodies above the caps: multipart above the upload limit, JSON above 1 MiB
            (client.post("/v1/jobs", data={"job": json.dumps({"task": VARY})},
                         files={"input_image": ("x.png", image + bytes(70 << 10))}), 413, "larger than"),
            (client.post("/v1/jobs", json={"task": VARY, "input_image_base64": "A" * (1100 << 10)}), 413,
             "send large images as multipart/form-data"),
            (client.patch("/v1/jobs/nope", json={"input_image_base64": b64(image)}), 404, "nope"),
            (client.patch("/v1/jobs/nope", json={}), 422, "give 'task' fields, 'priority' and/or an input image"),
        ]
        for number, (response, status, words) in enumerate(cases):
            assert response.status_code == status, (number, response.status_code, response.text)
            assert words in response.json()["detail"], (number, response.json())
        assert client.get("/v1/jobs").json() == []
        assert stored_files(stub) == []


# ------------------------------------------------------------------------------------------ accepted formats
def gray16_png() -> bytes:
    ramp = (np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) * 40).astype(np.uint16)
    data = png_bytes(Image.fromarray(ramp, "I;16"))
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode in ("I;16", "I") and check.info.get("bits", 16) == 16
    return data


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    noisy_rgb(48, 32, seed=11).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


GOOD_UPLOADS = [
    ("grayscale PNG", lambda: png_bytes(noisy_rgb(seed=12).convert("L")), "L", ".png"),
    ("RGBA PNG", lambda: png_bytes(noisy_rgb(seed=13).convert("RGBA")), "RGBA", ".png"),
    ("16-bit PNG", gray16_png, "I", ".png"),
    ("EXIF-rotated JPEG", exif_rotated_jpeg, "RGB", ".jpg"),
    ("palette PNG", lambda: png_bytes(noisy_rgb(seed=14).convert("P")), "P", ".png"),
    ("WebP", lambda: _webp(), "RGB", ".webp"),
]


def _webp() -> bytes:
    buffer = io.BytesIO()
    noisy_rgb(seed=15).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "make", "mode", "suffix"), GOOD_UPLOADS, ids=[case[0] for case in GOOD_UPLOADS])
def test_other_image_kinds_are_accepted_unchanged(tmp_path: Path, name: str, make: Any, mode: str,
                                                  suffix: str) -> None:
    data = make()
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        response = client.post("/v1/jobs", data={"job": json.dumps({"task": VARY})},
                               files={"input_image": ("upload", data, "application/octet-stream")})
        assert response.status_code == 201, response.text
        assert response.json()["task"]["input_image"] == sha256(data)
        assert wait_final(client, response.json()["id"])["state"] == "done"
        stored = stub.output_dir / "inputs" / f"{sha256(data)}{suffix}"
        assert stored.read_bytes() == data  # kept byte for byte: EXIF orientation and bit depth included
        assert stub.inputs_seen[0][0] == "input_image" and stub.inputs_seen[0][2].startswith(mode)
        if name == "EXIF-rotated JPEG":
            with Image.open(stored) as image:
                assert image.getexif()[0x0112] == 6 and image.size == (48, 32)


# ------------------------------------------------------------------------------------------ documentation
def test_openapi_documents_the_input_image_fields_and_routes(tmp_path: Path) -> None:
    stub = StubEngine(tmp_path / "out")
    with run_api(tmp_path, stub, with_worker=False) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        schema = client.get("/openapi.json").json()
        components = schema["components"]["schemas"]
        task_fields = components["TaskFields"]["properties"]
        assert {"input_image", "inpaint_mask", "uov_method", "outpaint", "inpaint_method", "inpaint_engine",
                "inpaint_strength", "inpaint_respective_field", "inpaint_prompt", "mask_dilate", "invert_mask",
                "debug_inpaint"} <= set(task_fields)
        for model in ("JobSubmission", "JobPatch"):
            properties = components[model]["properties"]
            assert {"input_image_base64", "inpaint_mask_base64"} <= set(properties), model
            assert "base64" in properties["input_image_base64"]["description"]
        submit = schema["paths"]["/v1/jobs"]["post"]
        content = submit["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSubmission"}
        assert set(content["multipart/form-data"]["schema"]["properties"]) == {"job", "input_image", "inpaint_mask"}
        assert {"201", "413", "415", "422"} <= set(submit["responses"])
        patch = schema["paths"]["/v1/jobs/{job_id}"]["patch"]["requestBody"]["content"]
        assert patch["application/json"]["schema"] == {"$ref": "#/components/schemas/JobPatch"}
        assert "post" in schema["paths"]["/v1/inputs"] and "get" in schema["paths"]["/v1/inputs/{sha256}"]
        assert "multipart/form-data" in schema["paths"]["/v1/inputs"]["post"]["requestBody"]["content"]
        for reference in _references(schema):  # every $ref resolves
            assert reference.rsplit("/", 1)[1] in components, reference


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def test_a_real_inpaint_job_over_http_keeps_the_pixels_beyond_the_feather(tmp_path: Path) -> None:
    """End to end: multipart upload → queue → the real engine on the tiny models → the image over HTTP."""
    from foci.dev.make_models import write_tiny_models
    from foci.engine.engine import Engine
    from foci.imaging.blend import soft_mask
    from tests.service.test_api import tiny_settings

    models = tmp_path / "models"
    write_tiny_models(models)
    engine = Engine(models_dir=models, output_dir=tmp_path / "out", device="cpu", precision="fp32")
    picture = np.asarray(noisy_rgb(96, 64, seed=3))
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[20:40, 30:60] = 255
    task = {"prompt": "a cat", "styles": [], "image_number": 1, "seed": 4, "overwrite_step": 1,
            "base_model": "tiny.safetensors"}
    files = {"input_image": ("photo.png", png_bytes(Image.fromarray(picture)), "image/png"),
             "inpaint_mask": ("mask.png", png_bytes(Image.fromarray(mask)), "image/png")}
    with run_api(tmp_path, engine, settings=tiny_settings(models, default_model="tiny.safetensors")) as api, \
            httpx.Client(base_url=api.url, timeout=60) as client:
        created = client.post("/v1/jobs", data={"job": json.dumps({"task": task})}, files=files)
        assert created.status_code == 201, created.text
        job = wait_final(client, created.json()["id"], timeout=600)
        assert job["state"] == "done", job
        fetched = client.get(f"/v1/images/{job['images'][0]['path']}")
        assert fetched.status_code == 200
    out = np.asarray(Image.open(io.BytesIO(fetched.content)).convert("RGB"))
    assert out.shape == picture.shape
    beyond = soft_mask(mask) == 0
    assert np.array_equal(out[beyond], picture[beyond])
