"""Issue 10: both metadata schemes record the Input Image settings (the image and mask by hash, never pixels) and
restore them."""

from __future__ import annotations

import hashlib
import json

import pytest

from foci.records.metadata import ImageRecord, task_from_metadata, to_a1111_text, to_fooocus_json
from foci.task import INPAINT_DETAIL, INPAINT_MODIFY, GenerationTask

IMAGE = hashlib.sha256(b"the input image").hexdigest()
MASK = hashlib.sha256(b"the mask").hexdigest()
INPUT_FIELDS = {"input_image", "uov_method", "inpaint_mask", "outpaint", "inpaint_method", "inpaint_engine",
                "inpaint_strength", "inpaint_respective_field", "inpaint_prompt", "mask_dilate", "invert_mask",
                "overwrite_vary_strength", "overwrite_upscale_strength"}

TASKS = {
    "upscale": dict(input_image=IMAGE, uov_method="Upscale (2x)", overwrite_upscale_strength=0.3,
                    overwrite_vary_strength=0.6),
    "vary": dict(input_image=IMAGE, uov_method="Vary (Strong)"),
    "inpaint": dict(input_image=IMAGE, inpaint_mask=MASK, outpaint=["Left", "Bottom"], inpaint_method=INPAINT_MODIFY,
                    inpaint_engine="v2.5", inpaint_strength=0.8, inpaint_respective_field=0.25,
                    inpaint_prompt='a "red" hat, café ☕\nsecond line', mask_dilate=-12, invert_mask=True),
    "detail without engine": dict(input_image=IMAGE, inpaint_mask=MASK, inpaint_method=INPAINT_DETAIL,
                                  inpaint_engine="None", inpaint_strength=0.0, inpaint_respective_field=1.0,
                                  mask_dilate=64),
    "outpaint only": dict(input_image=IMAGE, outpaint=["Top", "Right"]),
}


def record_of(task: GenerationTask) -> ImageRecord:
    width, height = task.size
    return ImageRecord(task=task, seed=task.seed, width=width, height=height, positive_items=[task.prompt],
                       negative_items=[], prompt_expansion="", base_model_name="model.safetensors",
                       base_model_hash="0123456789", software="Foci 0.1.0", device="torch, cpu, float32")


def payload(task: GenerationTask, scheme: str) -> str:
    record = record_of(task)
    return to_fooocus_json(record) if scheme == "fooocus" else to_a1111_text(record)


@pytest.mark.parametrize("scheme", ["fooocus", "a1111"])
@pytest.mark.parametrize("name", list(TASKS))
def test_input_image_settings_round_trip(scheme: str, name: str) -> None:
    task = GenerationTask(prompt="a cat", seed=7, base_model="model.safetensors", styles=[], **TASKS[name])
    text = payload(task, scheme)
    assert IMAGE in text and (MASK in text) == (task.inpaint_mask is not None)  # by hash
    restored = task_from_metadata(text, scheme, model_files=["model.safetensors"])
    assert restored.model_dump(include=INPUT_FIELDS) == task.model_dump(include=INPUT_FIELDS)
    assert restored.input_mode == task.input_mode
    assert (restored.prompt, restored.seed) == ("a cat", 7)


def test_the_fooocus_keys_are_fooocus_names() -> None:
    task = GenerationTask(prompt="a cat", styles=[], **TASKS["inpaint"])
    data = json.loads(payload(task, "fooocus"))
    assert data["input_image"] == IMAGE and data["inpaint_mask"] == MASK
    assert data["outpaint_selections"] == "Left, Bottom"
    assert data["inpaint_method"] == INPAINT_MODIFY and data["inpaint_engine_version"] == "v2.5"
    assert (data["inpaint_strength"], data["inpaint_respective_field"]) == (0.8, 0.25)
    assert data["inpaint_erode_or_dilate"] == -12 and data["invert_mask"] is True
    assert data["inpaint_additional_prompt"] == 'a "red" hat, café ☕\nsecond line'


def test_text_to_image_metadata_has_no_input_image_keys() -> None:
    task = GenerationTask(prompt="a cat", styles=[])
    fooocus = json.loads(payload(task, "fooocus"))
    a1111 = payload(task, "a1111")
    for key in ("input_image", "uov_method", "inpaint_mask", "outpaint_selections", "inpaint_method",
                "inpaint_engine_version", "inpaint_strength", "invert_mask", "overwrite_vary_strength"):
        assert key not in fooocus
    for key in ("Input image", "Upscale or variation", "Inpaint", "Outpaint", "Mask erode", "Invert mask"):
        assert key not in a1111
    for scheme, text in (("fooocus", json.dumps(fooocus)), ("a1111", a1111)):
        restored = task_from_metadata(text, scheme)
        assert restored.model_dump(include=INPUT_FIELDS) == task.model_dump(include=INPUT_FIELDS)
        assert restored.input_mode == "text"
