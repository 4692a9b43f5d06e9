"""The web UI's Input Image panel, without Gradio: its control values → task fields and back (§1.7, §2.12 step 1).

The panel has two tabs. *Upscale or Variation* is an image and a method; *Inpaint or Outpaint* is an image editor
(the image as background, the mask painted with a white brush in its layers), a method, outpaint directions, an
additional prompt and, behind "Enable Advanced Masking Features", a mask upload, invert, erode/dilate and the
engine / strength / respective-field controls. As in Fooocus only the selected tab counts, and only while the
"Input Image" checkbox is ticked; controls hidden by the method or by advanced masking do not count either.

The image goes into the engine's content-addressed store (:class:`~foci.files.input_images.InputImageStore`) and
the task names it by hash. The mask stored with it is the painted strokes max-combined with the uploaded mask
(resized to the image, averaged over channels and thresholded, as Fooocus assembles them), one gray PNG of the
image's size, white = repaint; erode/dilate and invert stay task fields the engine applies.

Control values are keyed by the names in :data:`INPUT_CONTROLS`; the editor value is Gradio's ``ImageEditor``
value with ``type="numpy"``, ``image_mode="RGBA"``: ``{"background": (H, W, 4) uint8, "layers": [(H, W, 4) uint8,
…], "composite": …}``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from foci.files.input_images import InputImageStore
from foci.imaging.masks import assemble_mask, binarise_uploaded_mask, has_inpaint_work, read_mask, read_rgb
from foci.records.image_input import ImageInputError, check_pixels
from foci.task import INPAINT_DEFAULT, INPAINT_DETAIL, INPAINT_METHODS, GenerationTask

InputTab = Literal["uov", "inpaint"]
INPUT_TABS: tuple[InputTab, ...] = ("uov", "inpaint")

INPUT_CONTROLS: tuple[str, ...] = (
    "input_image_enabled", "input_tab", "uov_image", "uov_method", "inpaint_editor", "inpaint_method",
    "inpaint_prompt", "outpaint", "inpaint_advanced", "inpaint_mask_upload", "invert_mask", "mask_dilate",
    "inpaint_engine", "inpaint_strength", "inpaint_respective_field",
)
"""The panel's control names (``input_tab`` is the selected tab, kept per browser session)."""

EXAMPLE_INPAINT_PROMPTS: tuple[str, ...] = ("detailed face", "detailed hand", "detailed eyes", "detailed hair",
                                            "sharp details")
"""The quick list under the additional prompt box (Improve Detail)."""

ADVANCED_FIELDS: tuple[str, ...] = ("inpaint_engine", "inpaint_strength", "inpaint_respective_field")
"""The controls a method change resets to the method's defaults."""


class InputImageUIError(ValueError):
    """Panel values that cannot become a task; the message is shown to the user."""


@dataclass(frozen=True)
class MethodLayout:
    """What the Inpaint tab shows for one method (§1.7's table)."""

    prompt_box: bool
    quick_list: bool
    outpaint: bool
    engine: str
    strength: float
    respective_field: float


def method_layout(method: str) -> MethodLayout:
    """The controls shown and the engine / strength / respective-field defaults of an inpaint ``method``."""
    if method not in INPAINT_METHODS:
        method = INPAINT_DEFAULT
    defaults = GenerationTask.model_construct(inpaint_method=method)
    return MethodLayout(prompt_box=method != INPAINT_DEFAULT, quick_list=method == INPAINT_DETAIL,
                        outpaint=method == INPAINT_DEFAULT, engine=defaults.effective_inpaint_engine,
                        strength=defaults.effective_inpaint_strength,
                        respective_field=defaults.effective_respective_field)


# ------------------------------------------------------------------------------------------------ masks
def stroke_mask(layers: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The mask painted in the editor's layers: each layer's channel 0 composited on black (``R·A/255`` for RGBA,
    so a white stroke gives its coverage), max-combined over the layers; ``(height, width)`` uint8, 255 = repaint."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            painted = (layer[:, :, 0].astype(np.uint32) * layer[:, :, 3] + 127) // 255
        elif layer.ndim == 3:
            painted = layer[:, :, 0]
        elif layer.ndim == 2:
            painted = layer
        else:
            raise InputImageUIError(f"the mask canvas gave a layer of shape {layer.shape}")
        if painted.shape != (height, width):
            raise InputImageUIError(f"the mask canvas is {painted.shape[1]}×{painted.shape[0]} but the image is "
                                    f"{width}×{height}; upload the image again")
        mask = np.maximum(mask, painted.astype(np.uint8))
    return mask


def combine_masks(strokes: np.ndarray, uploaded: np.ndarray | None) -> np.ndarray:
    """The painted ``strokes`` max-combined with an ``uploaded`` mask image (any size, ``(H, W[, C])``), which is
    first resized (Lanczos) to the strokes' size, averaged over its channels and thresholded at > 127 (§2.12.1)."""
    if uploaded is None:
        return strokes
    height, width = strokes.shape
    return np.maximum(strokes, binarise_uploaded_mask(uploaded, width, height))


def png_bytes(pixels: np.ndarray) -> bytes:
    """``pixels`` (gray ``(H, W)``, RGB or RGBA) as a PNG file; an RGBA image that is fully opaque is saved as RGB."""
    if pixels.ndim == 3 and pixels.shape[2] == 4 and bool(np.all(pixels[:, :, 3] == 255)):
        pixels = pixels[:, :, :3]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8, copy=False))).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """A stored gray mask as an editor layer: white with the mask as its alpha (the inverse of :func:`stroke_mask`)."""
    layer = np.full((*mask.shape, 4), 255, dtype=np.uint8)
    layer[:, :, 3] = mask
    return layer


# ------------------------------------------------------------------------------------------------ panel → task
def input_image_fields(values: Mapping[str, Any], store: InputImageStore) -> dict[str, Any]:
    """The task fields the panel describes (empty for text to image), storing the image and mask in ``store``.

    :class:`InputImageUIError` for a chosen method without an image, an image that is not one or is too large, or
    an Inpaint tab with nothing to do (no mask pixel and no outpaint direction: Fooocus would quietly make a new
    picture instead).
    """
    if not values.get("input_image_enabled"):
        return {}
    tab = values.get("input_tab") or "uov"
    try:
        if tab == "uov":
            return _uov_fields(values, store)
        if tab == "inpaint":
            return _inpaint_fields(values, store)
    except ImageInputError as error:
        raise InputImageUIError(str(error)) from None
    return {}


def _uov_fields(values: Mapping[str, Any], store: InputImageStore) -> dict[str, Any]:
    method = values.get("uov_method") or "Disabled"
    if method == "Disabled":
        return {}
    path = values.get("uov_image")
    if not path:
        raise InputImageUIError(f'upload an image in the "Upscale or Variation" tab to {method}, or untick '
                                "Input Image")
    return {"input_image": store.put_file(Path(path), what="the input image"), "uov_method": method}


def _inpaint_fields(values: Mapping[str, Any], store: InputImageStore) -> dict[str, Any]:
    editor = values.get("inpaint_editor") or {}
    background = editor.get("background") if isinstance(editor, Mapping) else None
    if background is None:
        raise InputImageUIError('upload an image in the "Inpaint or Outpaint" tab, or untick Input Image')
    background = np.asarray(background)
    height, width = background.shape[:2]
    check_pixels(width, height, what="the inpaint image")
    method = values.get("inpaint_method") or INPAINT_DEFAULT
    layout = method_layout(method)
    advanced = bool(values.get("inpaint_advanced"))
    mask = stroke_mask(editor.get("layers") or [], height, width)
    upload = values.get("inpaint_mask_upload") if advanced else None
    if upload:
        mask = combine_masks(mask, read_mask(upload, what="the uploaded mask"))
    outpaint = [str(side) for side in values.get("outpaint") or []] if layout.outpaint else []
    dilate = int(values.get("mask_dilate") or 0) if advanced else 0
    invert = bool(values.get("invert_mask")) if advanced else False
    if not has_inpaint_work(assemble_mask(height, width, canvas=mask, grow=dilate, invert=invert), outpaint):
        raise InputImageUIError("nothing to inpaint: paint the area to change on the image (or upload a mask "
                                "under Enable Advanced Masking Features), or choose an outpaint direction")
    fields: dict[str, Any] = {
        "input_image": store.put_bytes(png_bytes(background), what="the inpaint image"),
        "inpaint_mask": store.put_bytes(png_bytes(mask), what="the mask") if mask.any() or invert else None,
        "outpaint": outpaint, "inpaint_method": method, "mask_dilate": dilate, "invert_mask": invert,
        "inpaint_prompt": str(values.get("inpaint_prompt") or "") if layout.prompt_box else "",
    }
    defaults = {"inpaint_engine": layout.engine, "inpaint_strength": layout.strength,
                "inpaint_respective_field": layout.respective_field}
    for name, default in defaults.items():  # None = the method's own value
        value = values.get(name) if advanced else None
        fields[name] = None if value is None or value == default else value
    return fields


# ------------------------------------------------------------------------------------------------ task → panel
@dataclass(frozen=True)
class PanelState:
    """The panel showing a task: control values (keyed like :data:`INPUT_CONTROLS`; an image that could not be
    found is left out, so the control keeps what it shows) and what to tell the user."""

    values: dict[str, Any]
    warnings: tuple[str, ...] = ()


def panel_from_task(task: GenerationTask, store: InputImageStore | None) -> PanelState:
    """The panel's values for ``task`` (metadata pasted, an image dropped): method, prompt, directions, advanced
    masking and the image and mask when ``store`` still holds them (``store`` may be None for a task without an
    input image)."""
    advanced = (task.inpaint_engine is not None or task.inpaint_strength is not None
                or task.inpaint_respective_field is not None or task.mask_dilate != 0 or task.invert_mask)
    values: dict[str, Any] = {
        "input_image_enabled": task.input_mode != "text",
        "input_tab": "inpaint" if task.input_mode == "inpaint" else "uov",
        "uov_method": task.uov_method, "inpaint_method": task.inpaint_method, "inpaint_prompt": task.inpaint_prompt,
        "outpaint": list(task.outpaint), "inpaint_advanced": advanced, "invert_mask": task.invert_mask,
        "mask_dilate": task.mask_dilate, "inpaint_engine": task.effective_inpaint_engine,
        "inpaint_strength": task.effective_inpaint_strength,
        "inpaint_respective_field": task.effective_respective_field,
    }
    if task.input_image is None or store is None:
        return PanelState(values)
    warnings: list[str] = []
    try:
        image = read_rgb(store.path(task.input_image), what="the stored input image")
    except ImageInputError:
        warnings.append(f"the input image of these parameters ({task.input_image[:12]}…) is not stored here: "
                        "upload it again")
        return PanelState(values, tuple(warnings))
    if task.input_mode == "uov":
        values["uov_image"] = image
        return PanelState(values, tuple(warnings))
    layers: list[np.ndarray] = []
    if task.inpaint_mask is not None:
        try:
            mask = read_mask(store.path(task.inpaint_mask), what="the stored mask")
            height, width = image.shape[:2]
            layers.append(mask_layer(binarise_uploaded_mask(mask, width, height)))
        except ImageInputError:
            warnings.append(f"the mask of these parameters ({task.inpaint_mask[:12]}…) is not stored here: "
                            "paint it again")
    values["inpaint_editor"] = {"background": image, "layers": layers, "composite": None}
    return PanelState(values, tuple(warnings))
