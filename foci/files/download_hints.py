"""Readable lines for failed downloads: a machine without a connection gets advice, not a resolver error."""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path
from urllib.parse import urlsplit

_NO_CONNECTION = (socket.gaierror, ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                  TimeoutError, socket.timeout)


def is_connection_failure(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) says the server could not be reached at all: the name did not
    resolve, the connection was refused or timed out. HTTP answers (404, 500 …) are not connection failures."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib.error.HTTPError):
            return False
        if isinstance(current, _NO_CONNECTION):
            return True
        if isinstance(current, urllib.error.URLError) and isinstance(current.reason, _NO_CONNECTION):
            return True
        current = current.__cause__ or current.__context__
    return False


def download_failure_message(error: BaseException, *, url: str, file_name: str, folder: str | Path) -> str:
    """``no connection to HOST — set --hf-mirror or put FILE in FOLDER/`` for a connection failure, else the
    error's own text."""
    if not is_connection_failure(error):
        return str(error)
    host = urlsplit(url).hostname or url
    return f"no connection to {host} — set --hf-mirror or put {file_name} in {Path(folder).as_posix()}/"
