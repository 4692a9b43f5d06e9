"""Readable lines for failed downloads: a machine without a connection gets advice, not a resolver error."""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from foci.files.downloads import DownloadFailure

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


def startup_download_report(failures: Sequence[DownloadFailure], *, offline: bool) -> str:
    """Every file the start-up download could not fetch, each with why, from where and into which folder, then
    what to do (a mirror, or the files by hand and ``--offline``)."""
    lines = [f"{len(failures)} model file(s) are missing; a task that needs them fails until they are in place:"]
    for failure in failures:
        entry = failure.entry
        host = urlsplit(failure.url).hostname or failure.url
        reason = f"no connection to {host}" if is_connection_failure(failure.error) else \
            " ".join(str(failure.error).split())
        size = f" ({human_bytes(entry.size)})" if entry.size is not None else ""
        lines.append(f"  {entry.file_name}{size}: {reason}; from {failure.url} into {failure.folder.as_posix()}/")
    if offline:
        lines.append("  What to do: download them from the URLs above into those folders, or start without "
                     "--offline.")
    else:
        lines.append("  What to do: set --hf-mirror URL (and --mirror ORIGIN=URL for other hosts) to a mirror that "
                     "has them, or download them from the URLs above into those folders and start with --offline.")
    return "\n".join(lines)


def human_bytes(count: float) -> str:
    """A byte count for people: ``512 B``, ``1.2 kB``, ``6.9 GB`` (powers of 1000, like download pages)."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} GB"
