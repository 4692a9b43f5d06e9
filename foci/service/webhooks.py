"""Job webhooks: POST the finished job's JSON to the URL given at submit time.

:func:`post_webhook` does one delivery (with retries) in the calling thread. :class:`WebhookDispatcher` is the
callable to hand to the worker: it delivers in its own background threads, so a slow or dead receiver never
holds up generation.

Deliveries obey :mod:`foci.files.netpolicy`: the receiver (and every redirect) must resolve to a public address unless
the operator's allow-list (config key ``webhook_allow``: host names, addresses or networks) names it, so a job
cannot make the server POST to itself, its loopback services or the private network.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from foci import __version__
from foci.files.netpolicy import AddressPolicy, AddressRefused, UnresolvableHost, open_url

if TYPE_CHECKING:
    from foci.service.jobs import Job

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
MAX_REDIRECTS = 3
_log = logging.getLogger(__name__)


class WebhookError(ValueError):
    """A webhook URL that cannot be used (not http/https, no host)."""


def validate_webhook_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host; else raise :class:`WebhookError`."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise WebhookError(f"webhook_url {url!r} is not a valid URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook_url must be an http:// or https:// URL with a host, got {url!r}")
    if any(char.isspace() or ord(char) < 32 for char in url.strip()):
        raise WebhookError(f"webhook_url {url!r} contains spaces or control characters")
    return url.strip()


def check_webhook_target(url: str, allow: Sequence[str] = ()) -> str:
    """Return ``url`` if a delivery there is allowed now (see the module docstring); else raise
    :class:`WebhookError`. A host that does not resolve yet is accepted: delivery checks again."""
    url = validate_webhook_url(url)
    try:
        return AddressPolicy(allow=tuple(allow)).check(url)
    except UnresolvableHost:
        return url
    except AddressRefused as error:
        raise WebhookError(f"webhook_url refused: {error}") from None


def _retryable(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    return True  # connection refused, DNS failure, timeout, reset …


def post_webhook(job: Job, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 backoff: float = 0.5, allow: Sequence[str] = ()) -> bool:
    """POST ``job`` as JSON to ``job.webhook_url``; retry up to ``retries`` times on network errors and 5xx.

    Returns True when the receiver answered 2xx. Failures are logged, never raised. No URL: nothing to do (True).
    A receiver (or redirect) at a non-public address not named in ``allow`` is refused without retrying.
    """
    policy = AddressPolicy(allow=tuple(allow))
    url = job.webhook_url
    if not url:
        return True
    body = job.model_dump_json().encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": f"foci/{__version__}",
               "X-Foci-Job": job.id, "X-Foci-Job-State": str(getattr(job.state, "value", job.state))}
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with open_url(request, policy, timeout=timeout, max_redirects=MAX_REDIRECTS) as response:
                response.read(65536)
            return True
        except AddressRefused as error:
            _log.warning("webhook for job %s to %s refused: %s", job.id, url, error)
            return False
        except Exception as error:  # a webhook must never take the worker down
            last = attempt == retries or not _retryable(error)
            _log.warning("webhook for job %s to %s failed (attempt %d/%d): %s%s", job.id, url, attempt + 1,
                         retries + 1, error, "" if last else "; retrying")
            if last:
                return False
            time.sleep(backoff * (2**attempt))
    return False


class WebhookDispatcher:
    """A ``webhook(job)`` callable for the worker that delivers in background threads.

    ``close()`` waits for deliveries in flight (bounded by their timeouts) and refuses new ones. ``allow`` is the
    operator's allow-list of non-public receivers (config ``webhook_allow``).
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, backoff: float = 0.5,
                 max_workers: int = 2, allow: Sequence[str] = ()) -> None:
        self.allow = tuple(allow)
        AddressPolicy(allow=self.allow)  # a malformed entry fails at start-up
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="foci-webhook")
        self._lock = Lock()
        self._pending: set[Future[bool]] = set()
        self._closed = False

    def __call__(self, job: Job) -> None:
        """Queue one delivery of ``job`` (no-op for a job without a webhook URL)."""
        if not job.webhook_url:
            return
        with self._lock:
            if self._closed:
                _log.warning("webhook for job %s dropped: dispatcher closed", job.id)
                return
            future = self._executor.submit(post_webhook, job, timeout=self.timeout, retries=self.retries,
                                           backoff=self.backoff, allow=self.allow)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def pending(self) -> int:
        """Deliveries queued or in flight."""
        with self._lock:
            return len(self._pending)

    def close(self, wait: bool = True) -> None:
        """Stop accepting jobs; with ``wait``, finish the queued deliveries first."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait)
