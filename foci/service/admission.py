"""What a task must satisfy before the server queues it (from the API or the UI), beyond the task record itself.

The CLI's local user may name model files by path; a client of the server may not: there a model is a name
inside the configured model folders (:func:`foci.files.folders.check_model_name`), nothing else.
"""

from __future__ import annotations

from foci.files.folders import ModelFoldersError, check_model_name
from foci.task import GenerationTask

# task field -> model kind (folder) it names
MODEL_FIELDS: dict[str, str] = {"base_model": "checkpoints", "refiner_model": "checkpoints", "vae": "vae"}


def check_model_names(task: GenerationTask) -> GenerationTask:
    """``task`` if every model it names is a plain name inside its model folders; ValueError naming the field
    otherwise. An empty base model (the server's default) and "None" placeholders are fine."""
    named = [(field, kind, getattr(task, field)) for field, kind in MODEL_FIELDS.items()]
    named += [(f"loras.{index}.name", "loras", lora.name) for index, lora in enumerate(task.loras)]
    for field, kind, name in named:
        if not name or name == "None":
            continue
        try:
            check_model_name(kind, name)
        except ModelFoldersError as error:
            raise ValueError(f"{field}: {error}") from None
    return task
