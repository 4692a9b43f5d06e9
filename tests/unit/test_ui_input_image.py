"""The web UI's Input Image panel without a browser: editor layers → mask, panel values → task fields and back."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from foci.apps.ui_input_image import (
    InputImageUIError,
    combine_masks,
    input_image_fields,
    mask_layer,
    method_layout,
    panel_from_task,
    png_bytes,
    stroke_mask,
)
from foci.files.input_images import InputImageStore
from foci.task import INPAINT_DEFAULT, INPAINT_DETAIL, INPAINT_MODIFY, GenerationTask


@pytest.fixture
def store(tmp_path: Path) -> InputImageStore:
    return InputImageStore(tmp_path / "inputs")


def _background(height: int = 6, width: int = 8) -> np.ndarray:
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, :, 0] = np.arange(width)[None, :] * 30
    pixels[:, :, 1] = np.arange(height)[:, None] * 40
    pixels[:, :, 3] = 255
    return pixels


def _stroke(height: int = 6, width: int = 8, *, rows: slice = slice(1, 3), cols: slice = slice(2, 5),
            alpha: int = 255) -> np.ndarray:
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    layer[rows, cols] = (255, 255, 255, alpha)
    return layer


def _inpaint(**values: Any) -> dict[str, Any]:
    return {"input_image_enabled": True, "input_tab": "inpaint",
            "inpaint_editor": {"background": _background(), "layers": [_stroke()], "composite": None}} | values


def _stored(store: InputImageStore, digest: str) -> np.ndarray:
    with Image.open(store.path(digest)) as image:
        return np.asarray(image)


# ------------------------------------------------------------------------------------------ masks
def test_stroke_mask_is_channel_zero_over_black_max_combined() -> None:
    first = _stroke(alpha=255)
    first[0, 0] = (255, 255, 255, 128)  # an anti-aliased edge: half covered
    first[5, 7] = (0, 0, 0, 0)
    second = np.zeros((6, 8, 3), dtype=np.uint8)
    second[4, 1, 0] = 200  # an RGB layer counts by its channel 0
    mask = stroke_mask([first, second], 6, 8)
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[1:3, 2:5] = 255
    expected[0, 0] = 128  # round(255·128/255)
    expected[4, 1] = 200
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert not stroke_mask([], 6, 8).any()
    with pytest.raises(InputImageUIError, match="canvas is 8×6 but the image is 9×6"):
        stroke_mask([first], 6, 9)


def test_uploaded_mask_is_resized_averaged_thresholded_then_max_combined() -> None:
    strokes = np.zeros((4, 4), dtype=np.uint8)
    strokes[0, 0] = 90  # below the threshold, kept as painted
    uploaded = np.zeros((2, 2, 3), dtype=np.uint8)
    uploaded[1, 1] = (255, 255, 255)  # the bottom-right quarter of a half-size mask
    uploaded[0, 1] = (255, 0, 0)  # averages to 85: not repainted
    combined = combine_masks(strokes, uploaded)
    assert combined[0, 0] == 90 and combined[3, 3] == 255 and combined[0, 3] == 0
    assert set(np.unique(combined)) == {0, 90, 255}
    assert combine_masks(strokes, None) is strokes
    assert np.array_equal(stroke_mask([mask_layer(combined)], 4, 4), combined)  # a restored mask paints the same


def test_png_bytes_drops_an_opaque_alpha_channel() -> None:
    with Image.open(__import__("io").BytesIO(png_bytes(_background()))) as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), _background()[:, :, :3])
    translucent = _background()
    translucent[0, 0, 3] = 10
    with Image.open(__import__("io").BytesIO(png_bytes(translucent))) as image:
        assert image.mode == "RGBA"


# ------------------------------------------------------------------------------------------ panel → task
def test_only_a_ticked_panel_and_a_chosen_method_count(store: InputImageStore, tmp_path: Path) -> None:
    picture = tmp_path / "in.jpg"
    Image.new("RGB", (16, 8), "teal").save(picture)
    uov = {"input_image_enabled": True, "input_tab": "uov", "uov_image": str(picture), "uov_method": "Vary (Subtle)"}
    fields = input_image_fields(uov, store)
    assert fields == {"input_image": hashlib.sha256(picture.read_bytes()).hexdigest(), "uov_method": "Vary (Subtle)"}
    assert store.find(fields["input_image"]) is not None  # the uploaded file itself, by its hash
    assert input_image_fields(uov | {"input_image_enabled": False}, store) == {}
    assert input_image_fields(uov | {"uov_method": "Disabled"}, store) == {}  # text to image, as Fooocus
    # The selected tab decides: a drawn inpaint canvas does not count while the UoV tab is selected.
    assert input_image_fields(_inpaint(input_tab="uov", uov_method="Disabled"), store) == {}
    assert input_image_fields(uov | {"input_tab": "inpaint"} | _inpaint(), store)["inpaint_mask"] is not None
    with pytest.raises(InputImageUIError, match='upload an image in the "Upscale or Variation" tab'):
        input_image_fields(uov | {"uov_image": None}, store)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(InputImageUIError, match="not an image file"):
        input_image_fields(uov | {"uov_image": str(not_an_image)}, store)


def test_inpaint_tab_stores_the_image_and_the_painted_mask(store: InputImageStore) -> None:
    fields = input_image_fields(_inpaint(inpaint_prompt="ignored: hidden for the default method"), store)
    assert fields == {"input_image": fields["input_image"], "inpaint_mask": fields["inpaint_mask"], "outpaint": [],
                      "inpaint_method": INPAINT_DEFAULT, "mask_dilate": 0, "invert_mask": False, "inpaint_prompt": "",
                      "inpaint_engine": None, "inpaint_strength": None, "inpaint_respective_field": None}
    assert np.array_equal(_stored(store, fields["input_image"]), _background()[:, :, :3])
    mask = _stored(store, fields["inpaint_mask"])
    assert mask.shape == (6, 8) and mask[1:3, 2:5].min() == 255 and mask.sum() == 255 * 6
    task = GenerationTask(base_model="b.safetensors", **fields)
    assert task.input_mode == "inpaint" and task.effective_respective_field == 0.618


def test_an_inpaint_tab_with_nothing_to_do_is_refused(store: InputImageStore) -> None:
    empty = {"background": _background(), "layers": [], "composite": None}
    with pytest.raises(InputImageUIError, match="nothing to inpaint"):
        input_image_fields(_inpaint(inpaint_editor=empty), store)
    faint = {"background": _background(), "layers": [_stroke(alpha=100)], "composite": None}
    with pytest.raises(InputImageUIError, match="nothing to inpaint"):  # ≤ 127 everywhere: Fooocus skips it
        input_image_fields(_inpaint(inpaint_editor=faint), store)
    assert list(store.folder.glob("*")) == [] if store.folder.exists() else True  # nothing stored
    outpaint = input_image_fields(_inpaint(inpaint_editor=empty, outpaint=["Left", "Top"]), store)
    assert outpaint["inpaint_mask"] is None and outpaint["outpaint"] == ["Left", "Top"]
    inverted = input_image_fields(_inpaint(inpaint_editor=empty, inpaint_advanced=True, invert_mask=True), store)
    assert inverted["invert_mask"] and not _stored(store, inverted["inpaint_mask"]).any()
    with pytest.raises(InputImageUIError, match='upload an image in the "Inpaint or Outpaint" tab'):
        input_image_fields(_inpaint(inpaint_editor=None), store)
    huge = {"background": np.zeros((1, 40_000_000, 4), dtype=np.uint8), "layers": [], "composite": None}
    with pytest.raises(InputImageUIError, match="Mpx"):
        input_image_fields(_inpaint(inpaint_editor=huge, outpaint=["Left"]), store)


def test_hidden_controls_do_not_count(store: InputImageStore, tmp_path: Path) -> None:
    mask_file = tmp_path / "mask.png"
    left_half = np.zeros((3, 4), dtype=np.uint8)
    left_half[:, :2] = 255
    Image.fromarray(left_half).save(mask_file)
    advanced = dict(inpaint_mask_upload=str(mask_file), invert_mask=True, mask_dilate=1, inpaint_engine="v1",
                    inpaint_strength=0.7, inpaint_respective_field=0.618)
    plain = input_image_fields(_inpaint(**advanced), store)  # advanced masking unticked
    assert (plain["invert_mask"], plain["mask_dilate"], plain["inpaint_engine"], plain["inpaint_strength"]) == \
        (False, 0, None, None)
    assert _stored(store, plain["inpaint_mask"]).sum() == 255 * 6  # the upload is not used either
    chosen = input_image_fields(_inpaint(inpaint_advanced=True, **advanced), store)
    # A value equal to the method's own default is stored as None ("from the method").
    assert (chosen["invert_mask"], chosen["mask_dilate"], chosen["inpaint_engine"], chosen["inpaint_strength"],
            chosen["inpaint_respective_field"]) == (True, 1, "v1", 0.7, None)
    combined = _stored(store, chosen["inpaint_mask"])  # the uploaded left half, resized, and the stroke
    assert combined[:, :4].min() == 255 and combined[1:3, 2:5].min() == 255 and combined[:, 5:].max() == 0
    detail = input_image_fields(_inpaint(inpaint_method=INPAINT_DETAIL, inpaint_prompt="detailed hand",
                                         outpaint=["Left"]), store)
    assert detail["inpaint_prompt"] == "detailed hand" and detail["outpaint"] == []
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputImageUIError, match="uploaded mask is not an image file"):
        input_image_fields(_inpaint(inpaint_advanced=True, inpaint_mask_upload=str(bad)), store)


def test_method_layouts_follow_the_table() -> None:
    assert method_layout(INPAINT_DEFAULT) == method_layout("unknown")
    default, detail, modify = (method_layout(name) for name in (INPAINT_DEFAULT, INPAINT_DETAIL, INPAINT_MODIFY))
    assert (default.prompt_box, default.quick_list, default.outpaint) == (False, False, True)
    assert (default.engine, default.strength, default.respective_field) == ("v2.6", 1.0, 0.618)
    assert (detail.prompt_box, detail.quick_list, detail.outpaint) == (True, True, False)
    assert (detail.engine, detail.strength, detail.respective_field) == ("None", 0.5, 0.0)
    assert (modify.prompt_box, modify.quick_list, modify.outpaint) == (True, False, False)
    assert (modify.engine, modify.strength, modify.respective_field) == ("v2.6", 1.0, 0.0)


# ------------------------------------------------------------------------------------------ task → panel
def test_a_restored_task_fills_the_panel_and_builds_the_same_fields(store: InputImageStore) -> None:
    values = _inpaint(inpaint_method=INPAINT_MODIFY, inpaint_prompt="a red kite", inpaint_advanced=True,
                      mask_dilate=2, inpaint_strength=0.8, inpaint_engine="v2.6", inpaint_respective_field=0.0)
    fields = input_image_fields(values, store)
    task = GenerationTask(base_model="b.safetensors", **fields)
    state = panel_from_task(task, store)
    assert state.warnings == ()
    panel = state.values
    assert (panel["input_image_enabled"], panel["input_tab"], panel["inpaint_method"], panel["inpaint_prompt"],
            panel["inpaint_advanced"], panel["mask_dilate"], panel["inpaint_strength"], panel["inpaint_engine"]) == \
        (True, "inpaint", INPAINT_MODIFY, "a red kite", True, 2, 0.8, "v2.6")
    assert np.array_equal(panel["inpaint_editor"]["background"], _background()[:, :, :3])
    assert input_image_fields(panel, store) == fields  # the same image and mask, by hash

    text = panel_from_task(GenerationTask(), store)
    assert text.values["input_image_enabled"] is False and "inpaint_editor" not in text.values

    missing = task.model_copy(update={"input_image": "0" * 64})
    lost = panel_from_task(missing, store)
    assert "inpaint_editor" not in lost.values and "upload it again" in lost.warnings[0]
    assert lost.values["inpaint_method"] == INPAINT_MODIFY  # the settings are restored all the same
