"""What a task must satisfy before the server queues it, beyond the task record itself: one check, used alike by
the REST API and the web UI (:func:`admit`).

The CLI's local user may name model files by path; a client of the server may not: there a model is a name
inside the configured model folders (:func:`foci.files.folders.check_model_name`), nothing else.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from foci.files.folders import ModelFoldersError, check_model_name
from foci.settings.performance import Performance, PerformanceError
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.files.input_images import InputImageStore
    from foci.text.styles import StyleLibrary

# task field -> model kind (folder) it names
MODEL_FIELDS: dict[str, str] = {"base_model": "checkpoints", "refiner_model": "checkpoints", "vae": "vae",
                               "upscale_model": "upscale_models"}
INPUT_IMAGE_FIELDS = ("input_image", "inpaint_mask")  # task fields that name a file of the input store by hash


class AdmissionError(ValueError):
    """A task the server does not queue; the message reads ``field: reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_model_names(task: GenerationTask) -> GenerationTask:
    """``task`` if every model it names is a plain name inside its model folders; :class:`AdmissionError` naming
    the field otherwise. An empty base model (the server's default) and "None" placeholders are fine."""
    named = [(field, kind, getattr(task, field)) for field, kind in MODEL_FIELDS.items()]
    named += [(f"loras.{index}.name", "loras", lora.name) for index, lora in enumerate(task.loras)]
    for field, kind, name in named:
        if not name or name == "None":
            continue
        try:
            check_model_name(kind, name)
        except ModelFoldersError as error:
            raise AdmissionError(field, str(error)) from None
    return task


def check_input_images(task: GenerationTask, inputs: InputImageStore, *, arriving: Collection[str] = ()
                       ) -> GenerationTask:
    """``task`` if every input image and mask it names (by hash) is in ``inputs`` or among ``arriving`` (hashes
    of files that are stored together with the task); :class:`AdmissionError` naming the field and hash else."""
    for field in INPUT_IMAGE_FIELDS:
        digest = getattr(task, field)
        if digest is not None and digest not in arriving and inputs.find(digest) is None:
            raise AdmissionError(field, f"no input image {digest} is stored; upload the image again")
    return task


def admit(task: GenerationTask, *, styles: StyleLibrary, max_image_number: int,
          inputs: InputImageStore | None = None, arriving: Collection[str] = ()) -> GenerationTask:
    """``task`` if the server may queue it: a known performance, model names inside the model folders, no more
    images than the server allows, only styles it knows and (given ``inputs``) input images that are stored or
    ``arriving`` with it (:func:`check_input_images`); :class:`AdmissionError` for the first that fails."""
    try:
        Performance.parse(task.performance)
    except PerformanceError as error:
        raise AdmissionError("performance", str(error)) from None
    check_model_names(task)
    if task.image_number > max_image_number:
        raise AdmissionError("image_number", f"{task.image_number} is above the server's maximum {max_image_number}")
    try:
        styles.validate(task.styles)
    except ValueError as error:
        raise AdmissionError("styles", str(error)) from None
    if inputs is not None:
        check_input_images(task, inputs, arriving=arriving)
    return task
