"""Mirrors: ``ORIGIN=URL`` pairs that send a catalogue URL's host to another base URL."""

from __future__ import annotations

import re

from foci.files.downloads.errors import DownloadError

HF_ENDPOINT = "https://huggingface.co"


def parse_mirrors(text: str) -> dict[str, str]:
    """`ORIGIN=URL` pairs (separated by spaces or commas) as {origin: base URL}; a bad pair is a DownloadError."""
    mirrors = {}
    for pair in re.split(r"[\s,]+", text.strip()):
        if not pair:
            continue
        origin, sep, base = pair.partition("=")
        if not sep:
            raise DownloadError(f"mirror {pair!r} must be ORIGIN=URL, e.g. https://huggingface.co=https://my-mirror")
        mirrors[_origin(origin)] = _base_url(base)
    return mirrors


def _base_url(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise DownloadError(f"mirror must be an http(s) base URL, got {url!r}")
    return url.rstrip("/")


def _origin(url: str) -> str:
    """`scheme://host[:port]` of a URL given as an origin (a bare host means https)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    if not url.startswith(("https://", "http://")) or "/" in url.split("://", 1)[1]:
        raise DownloadError(f"mirror origin must be scheme://host, got {url!r}")
    return url
