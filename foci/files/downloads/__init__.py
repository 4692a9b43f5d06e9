"""Models on demand: the file catalogue (§2.24) and verified, resumable downloads over plain HTTP(S).

Only the standard library talks to the network (`urllib.request`): Hugging Face `resolve` URLs and GitHub release
assets are ordinary redirects to a CDN. Redirects are followed only to http(s) URLs, at most `max_redirects`, and
only to public addresses unless the host is the one the catalogue URL or the configured mirror names
(:mod:`foci.files.netpolicy`). A download streams into `<file>.part`, resumes with an HTTP `Range` request after a
dropped connection (restarting from zero when the server's `Content-Range` does not continue the `.part` file or
announces another total), retries transient failures with exponential backoff, checks size, SHA-256 and content
(:mod:`foci.models.content`) and only then moves the file into place with `os.replace`, so a model path never
holds a partial or unverified file.

Every connect and every read waits at most `timeout` seconds, and a file that receives no byte for
`stall_timeout` seconds, retries and their waits included, fails: a mirror that accepts connections but never
answers costs at most :data:`DEFAULT_STALL_TIMEOUT` seconds per file. Progress reports carry the bytes done, the
total, the speed and an ETA.

The expected SHA-256 of a file is the first of: the config's `model_sha256`, the catalogue's `sha256`, and the
pin in the hash cache (`foci models pin`, or the hash seen on the file's first download: trust on first use).

The package: ``catalogue`` (entries, what a preset or feature needs), ``fetch`` (the :class:`Downloader`),
``ranges`` (resuming over HTTP), ``progress`` (reports, tqdm bars), ``mirrors`` and ``errors``.
"""

from __future__ import annotations

from foci.files.downloads.catalogue import (
    ALWAYS,
    FEATURE_FILES,
    PRESETS,
    CatalogueEntry,
    feature_files,
    load_catalogue,
    missing_files,
    required_files,
)
from foci.files.downloads.errors import CatalogueError, DownloadError
from foci.files.downloads.fetch import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    Downloader,
    DownloadFailure,
    offline_message,
)
from foci.files.downloads.mirrors import HF_ENDPOINT, parse_mirrors
from foci.files.downloads.progress import DownloadProgress, ProgressCallback, tqdm_progress

__all__ = [
    "ALWAYS", "DEFAULT_STALL_TIMEOUT", "DEFAULT_TIMEOUT", "FEATURE_FILES", "HF_ENDPOINT", "PRESETS", "CatalogueEntry",
    "CatalogueError", "DownloadError", "DownloadFailure", "DownloadProgress", "Downloader", "ProgressCallback",
    "feature_files", "load_catalogue", "missing_files", "offline_message", "parse_mirrors", "required_files",
    "tqdm_progress",
]
