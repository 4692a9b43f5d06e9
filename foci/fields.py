"""The field table: what each :class:`~foci.task.GenerationTask` field means to every part of Foci, said once.

A task field is declared with :func:`field` instead of pydantic's ``Field``; next to its default and bounds it
names its CLI flag, its UI control, its key in both metadata schemes and its config key. The CLI parser
(:mod:`foci.apps.cli`), the Gradio controls (:mod:`foci.apps.webui`), both metadata writers and readers
(:mod:`foci.records.metadata`) and the config reader (:mod:`foci.settings.config`) are loops over
:func:`task_fields`. Numeric ranges come from the field's own ``ge``/``le``; choices from its ``Literal`` type or
``choices``.

Values that are not one plain value per field (the ADM scalers written as one tuple, LoRA lists, styles, FreeU,
model names shown as file stems, …) name a *converter*: a string that each consumer looks up in its own small
table of converters (``CLI_CONVERTERS``, ``UI_CONVERTERS``, ``FOOOCUS_CODECS``/``A1111_CODECS``,
``CONFIG_CONVERTERS``), so this module stays free of torch, gradio and file formats.

Adding a field is one line in ``task.py``::

    blur: float = field(0.0, ge=0.0, le=5.0, cli=Cli("--blur", help="blur radius"),
                        ui=Control("slider", "Blur", place="sampling", step=0.1),
                        fooocus=Meta("blur", omit_if_default=True), a1111=Meta("Blur", omit_if_default=True),
                        config="default_blur")
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Le
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Cli:
    """The field's command-line option of ``foci generate`` (and of ``foci prompt`` when ``prompt_command``)."""

    flag: str
    """``--steps``; a name without dashes is a positional argument."""
    help: str | None = None
    prompt_command: bool = False
    """Also an option of ``foci prompt`` (settings that change the prompts, not the pictures)."""
    action: Literal["value", "flag", "append"] = "value"
    """``value`` takes one value; ``flag`` takes none and sets ``flag_value``; ``append`` is repeatable."""
    flag_value: Any = True
    metavar: str | None = None
    convert: str | None = None
    """Converter in ``foci.apps.cli.CLI_CONVERTERS`` turning the parsed text into the field's value."""


@dataclass(frozen=True)
class Control:
    """The field's control in the web UI."""

    kind: Literal["slider", "number", "checkbox", "checkboxes", "radio", "dropdown", "textbox"]
    label: str
    place: str
    """Where the layout puts it: ``settings``, ``models``, ``advanced``, ``sampling``, ``overrides`` or
    ``custom`` (the layout builds it itself)."""
    step: float | None = None
    elem_id: str | None = None
    name: str | None = None
    """How error messages call it (default: the label)."""
    convert: str | None = None
    """Converter in ``foci.apps.webui.UI_CONVERTERS`` between control value(s) and field value."""


@dataclass(frozen=True)
class Meta:
    """The field's key in one metadata scheme."""

    key: str
    codec: str | None = None
    """Converter in ``foci.records.metadata`` (``FOOOCUS_CODECS`` / ``A1111_CODECS``) for a value that is not
    written as the plain field value; fields sharing a key share its codec, which writes and reads them all."""
    omit_if_default: bool = False
    """Leave the key out when the value equals the field default."""
    omit_values: tuple[Any, ...] = ()
    """Further values for which the key is left out."""
    absent: Any = PydanticUndefined
    """The value a missing key stands for, when it differs from the field default (``clip_skip``: 1)."""

    def omits(self, value: Any, default: Any) -> bool:
        """True when ``value`` is not written."""
        return (self.omit_if_default and value == default) or value in self.omit_values


@dataclass(frozen=True)
class Config:
    """The config key whose value becomes the field's default for new tasks."""

    key: str
    convert: str | None = None
    """Converter in ``foci.settings.config.CONFIG_CONVERTERS`` computing the value from the settings."""


@dataclass(frozen=True)
class FieldFacts:
    """Everything the table says about one field, plus what pydantic knows (default, bounds, choices)."""

    name: str
    type: type | None
    """``int``, ``float``, ``str`` or ``bool`` for plain values (also inside ``Literal``/``| None``), else None."""
    default: Any
    ge: float | None
    le: float | None
    choices: tuple[Any, ...] | None
    """The allowed values: the ``Literal``'s, or the ``choices`` given to :func:`field`."""
    literal: bool
    """True when ``choices`` come from a ``Literal`` type (pydantic checks them; else a validator does)."""
    cli: Cli | None = None
    ui: Control | None = None
    fooocus: Meta | None = None
    a1111: Meta | None = None
    config: Config | None = None

    @property
    def is_number(self) -> bool:
        """True for int and float fields (not bool)."""
        return self.type in (int, float)


def field(default: Any = PydanticUndefined, *, cli: Cli | None = None, ui: Control | None = None,
          fooocus: Meta | str | None = None, a1111: Meta | str | None = None, config: Config | str | None = None,
          choices: tuple[Any, ...] | None = None, **pydantic: Any) -> Any:
    """A pydantic ``Field`` carrying the field's facts. ``fooocus``/``a1111`` may be a bare key and ``config``
    a bare config key; ``choices`` names the allowed values of a ``str`` field checked by a validator;
    ``pydantic`` are ``Field`` arguments (``ge``, ``le``, ``default_factory``, ``description``, …)."""
    facts = _Declared(cli=cli, ui=ui, fooocus=Meta(fooocus) if isinstance(fooocus, str) else fooocus,
                      a1111=Meta(a1111) if isinstance(a1111, str) else a1111,
                      config=Config(config) if isinstance(config, str) else config, choices=choices)
    return Field(default, json_schema_extra=facts, **pydantic)


@dataclass(frozen=True)
class _Declared:
    """What :func:`field` stores on the ``FieldInfo`` (the rest of :class:`FieldFacts` comes from pydantic)."""

    cli: Cli | None
    ui: Control | None
    fooocus: Meta | None
    a1111: Meta | None
    config: Config | None
    choices: tuple[Any, ...] | None

    def __call__(self, schema: dict[str, Any]) -> None:
        """Pydantic's ``json_schema_extra`` hook: the facts ride along without changing the JSON schema."""


def task_fields(model: type[BaseModel] | None = None) -> Iterator[FieldFacts]:
    """The facts of every field of ``model`` (default :class:`~foci.task.GenerationTask`), in declaration order."""
    if model is None:
        from foci.task import GenerationTask

        model = GenerationTask
    for name, info in model.model_fields.items():
        yield facts_of(name, info)


def field_facts(name: str, model: type[BaseModel] | None = None) -> FieldFacts:
    """The facts of one field (KeyError for an unknown name)."""
    if model is None:
        from foci.task import GenerationTask

        model = GenerationTask
    return facts_of(name, model.model_fields[name])


def facts_of(name: str, info: FieldInfo) -> FieldFacts:
    """:class:`FieldFacts` of a pydantic field (all table entries None when it was not declared with :func:`field`)."""
    declared = info.json_schema_extra if isinstance(info.json_schema_extra, _Declared) else None
    plain, literal = _plain_type(info.annotation)
    default = info.get_default(call_default_factory=True)
    constraints = [*info.metadata, *_optional_metadata(info.annotation)]
    ge = next((item.ge for item in constraints if isinstance(item, Ge)), None)
    le = next((item.le for item in constraints if isinstance(item, Le)), None)
    choices = declared.choices if declared is not None and declared.choices is not None else literal
    is_literal = choices is not None and choices == literal
    if declared is None:
        return FieldFacts(name, plain, default, ge, le, choices, is_literal)
    return FieldFacts(name, plain, default, ge, le, choices, is_literal, cli=declared.cli, ui=declared.ui,
                      fooocus=declared.fooocus, a1111=declared.a1111, config=declared.config)


def _optional_metadata(annotation: Any) -> list[Any]:
    """The constraints of ``Annotated[X, …] | None`` (pydantic keeps them on the union's member, not the field)."""
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    found: list[Any] = []
    for option in get_args(annotation):
        for item in getattr(option, "__metadata__", ()):
            found.extend(getattr(item, "metadata", [item]))
    return found


def _plain_type(annotation: Any) -> tuple[type | None, tuple[Any, ...] | None]:
    """(int/float/str/bool or None, the Literal's values or None) of an annotation; ``X | None`` counts as X."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _plain_type(options[0]) if len(options) == 1 else (None, None)
    if origin is Literal:
        values = get_args(annotation)
        return type(values[0]), values
    if origin is not None and hasattr(annotation, "__metadata__"):  # Annotated[str, …]
        return _plain_type(get_args(annotation)[0])
    if annotation in (int, float, str, bool):
        return annotation, None
    return None, None
