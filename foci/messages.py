"""One clear line for a validation error, shown alike by the CLI, the REST API and the web UI."""

from __future__ import annotations

from typing import Any, Protocol


class _HasErrors(Protocol):
    def errors(self) -> Any: ...


def validation_message(error: _HasErrors, prefix: str = "") -> str:
    """``where: what; where: what`` for a pydantic ``ValidationError`` (or FastAPI's ``RequestValidationError``).

    ``prefix`` is put in front of every location (``task`` → ``task.steps: …``); pydantic's ``Value error, ``
    lead-in and the ``__root__``/``body`` location parts are dropped.
    """
    parts = []
    for item in error.errors():
        loc = [prefix] if prefix else []
        loc += [str(part) for part in item.get("loc", ()) if part not in ("__root__", "body")]
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(parts) or "invalid input"
