"""Resuming over HTTP: ``Content-Range`` answers, whether one continues a ``.part`` file, and its hash so far."""

from __future__ import annotations

import hashlib
import http.client
import re
from pathlib import Path
from typing import Any

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _content_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE_RE.match(header or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (int(start) if start else None, int(end) if end else None,
            int(total) if total and total != "*" else None)


def _resume_problem(response: http.client.HTTPResponse, offset: int, expected_total: int | None) -> str | None:
    """Why a 206 answer does not continue a `.part` file of `offset` bytes, or None when it does."""
    header = response.headers.get("Content-Range")
    start, end, total = _content_range(header)
    if start != offset:
        return f"server resumed at byte {start}, not {offset} (Content-Range {header!r})"
    if total is None:
        return f"server announced no total size (Content-Range {header!r})"
    if expected_total is not None and total != expected_total:
        return f"server announced a total of {total} bytes, not {expected_total} (Content-Range {header!r})"
    if end is not None and end != total - 1:
        return f"server sent a range ending at byte {end}, not at the end of the file (Content-Range {header!r})"
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != total - offset:
        return f"server sent {length} bytes for a range of {total - offset}"
    return None


def _hash_prefix(path: Path, length: int) -> Any:
    digest = hashlib.sha256()
    if length:
        with open(path, "rb") as handle:
            remaining = length
            while remaining and (block := handle.read(min(1 << 20, remaining))):
                digest.update(block)
                remaining -= len(block)
    return digest
