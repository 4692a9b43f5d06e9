"""The two ways making model files available fails: a bad catalogue (or name), and a failed download."""

from __future__ import annotations


class CatalogueError(ValueError):
    """A malformed catalogue file, an unknown catalogue name, preset or performance."""


class DownloadError(RuntimeError):
    """A model file could not be made available (offline, HTTP error, failed checksum, too many retries)."""
