"""Generation metadata in Fooocus's two schemes (§1.11): ``fooocus`` (sorted JSON) and ``a1111`` (plain text).

Both writers are pure functions of an :class:`ImageRecord` (no timestamps), so the same image always carries
the same bytes. :func:`task_from_metadata` is their inverse; it also reads metadata written by Fooocus and,
for the ``a1111`` scheme, by AUTOMATIC1111.

Writers and readers are loops over the field table (:mod:`foci.fields`, loop in :mod:`.table`): each task field
names its key in each scheme (``fooocus=`` / ``a1111=``), when the key is left out, and, for a value that is not
written as the plain field value, a codec of :data:`FOOOCUS_CODECS` (:mod:`.fooocus`) / :data:`A1111_CODECS`
(:mod:`.a1111`). Shared values and readers are in :mod:`.values`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from foci.records.metadata.a1111 import (
    A1111_CODECS,
    A1111_KEY_ORDER,
    A1111_SAMPLER_NAMES,
    a1111_sampler_label,
    parse_a1111_parameters,
    read_a1111,
    to_a1111_text,
)
from foci.records.metadata.fooocus import FOOOCUS_CODECS, read_fooocus, to_fooocus_json
from foci.records.metadata.table import Codec, Source
from foci.records.metadata.values import (
    DEFAULT_VAE_LABEL,
    METADATA_SCHEMES,
    NO_MODEL_LABEL,
    ImageRecord,
    MetadataError,
    version_label,
)
from foci.records.style_recovery import extract_styles_from_prompt
from foci.task import GenerationTask
from foci.text.styles import StyleLibrary

__all__ = ["A1111_CODECS", "A1111_KEY_ORDER", "A1111_SAMPLER_NAMES", "DEFAULT_VAE_LABEL", "FOOOCUS_CODECS",
           "METADATA_SCHEMES", "NO_MODEL_LABEL", "Codec", "ImageRecord", "MetadataError", "a1111_sampler_label",
           "extract_styles_from_prompt", "parse_a1111_parameters", "task_from_metadata", "to_a1111_text",
           "to_fooocus_json", "version_label"]


def task_from_metadata(
    payload: str | dict[str, Any],
    scheme: str | None = None,
    *,
    model_files: Iterable[str] = (),
    lora_files: Iterable[str] = (),
    vae_files: Iterable[str] = (),
    style_library: StyleLibrary | None = None,
    model: type[GenerationTask] = GenerationTask,
) -> GenerationTask:
    """Rebuild a task from either scheme's payload (the inverse of both writers).

    ``scheme`` None picks ``fooocus`` for a dict (or a string holding a JSON object), ``a1111`` for other
    text. Metadata stores model stems; a file in ``model_files`` / ``lora_files`` / ``vae_files`` with the
    same stem replaces the stem. Unknown keys are ignored. Malformed input raises :class:`MetadataError` (a
    ``ValueError``) naming the field. Settings metadata does not carry (image number, output format, developer
    overwrites other than the refiner switch) keep their defaults; steps and size are the effective ones.

    a1111 text without a ``Styles`` key (files written by Fooocus or AUTOMATIC1111) gets its styles un-wrapped
    from the prompt texts with :func:`extract_styles_from_prompt`, against ``style_library`` (default: the
    shipped styles); no style found means no style selected. ``model`` is the task class whose field table is
    read (a subclass with more fields reads their keys too).
    """
    if scheme is not None and scheme not in METADATA_SCHEMES:
        choices = ", ".join(METADATA_SCHEMES)
        raise MetadataError(f"unknown metadata scheme {scheme!r}; expected one of {choices}")
    data: object = payload
    if isinstance(payload, str) and scheme != "a1111":
        stripped = payload.strip()
        if stripped.startswith("{") or scheme == "fooocus":
            try:
                data = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError) as error:
                raise MetadataError(f"fooocus metadata is not valid JSON: {error}") from None
    if scheme is None:
        scheme = "fooocus" if isinstance(data, dict) else "a1111"
    source = Source(list(model_files), list(lora_files), list(vae_files), style_library)
    if scheme == "fooocus":
        if not isinstance(data, dict):
            raise MetadataError(f"fooocus metadata must be a JSON object, got {type(data).__name__}")
        return read_fooocus(data, source, model)
    if not isinstance(data, str):
        raise MetadataError(f"a1111 metadata must be text, got {type(data).__name__}")
    return read_a1111(data, source, model)
