"""The downloader: fetches catalogue files into model folders, resumable, retried, verified and atomic."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from foci.files.downloads.catalogue import CatalogueEntry, _lookup, load_catalogue, missing_files
from foci.files.downloads.errors import DownloadError
from foci.files.downloads.mirrors import HF_ENDPOINT, _base_url, _origin, parse_mirrors
from foci.files.downloads.progress import DownloadProgress, ProgressCallback
from foci.files.downloads.ranges import _content_range, _hash_prefix, _resume_problem
from foci.files.folders import ModelFolders
from foci.files.netpolicy import DEFAULT_MAX_REDIRECTS, AddressPolicy, AddressRefused, open_url

if TYPE_CHECKING:
    from foci.files.hash_cache import HashCache


logger = logging.getLogger("foci.files.downloads")  # the package's logger, as before the split


DEFAULT_TIMEOUT = 15.0
"""Seconds one connect or one read may wait."""
DEFAULT_STALL_TIMEOUT = 30.0
"""Seconds a file may go without receiving a byte, retries and their waits included, before it fails."""


_RETRY_STATUS = frozenset({408, 425, 429})


class _Transient(Exception):
    """A failure worth retrying (connection error, timeout, 5xx, short body)."""


class _Restart(Exception):
    """The .part file cannot be resumed; start again from zero at once."""


@dataclass
class _PartState:
    """Bytes in the .part file, the running SHA-256 over them, the total size the server announced first and
    the URL that served the last response."""

    length: int
    digest: Any
    total: int | None = None
    served_by: str = ""
    last_byte_at: float = 0.0  # time.monotonic() of the last byte received (or of the download's start)
    rate_origin: tuple[float, int] | None = None  # (time, bytes) the speed is measured from
    listener: ProgressCallback | None = None  # the caller's own progress callback, besides the downloader's


class Downloader:
    """Fetches catalogue files into model folders: resumable, retried, verified, atomic."""

    def __init__(self, *, mirror: str | None = None, offline: bool = False, retries: int = 4,
                 timeout: float = DEFAULT_TIMEOUT, stall_timeout: float = DEFAULT_STALL_TIMEOUT, backoff: float = 1.0,
                 progress: ProgressCallback | None = None, chunk_size: int = 1 << 20,
                 environ: Mapping[str, str] | None = None, hash_cache: HashCache | None = None,
                 sleep: Callable[[float], None] = time.sleep, user_agent: str | None = None,
                 known_sha256: Mapping[str, str] | None = None, address_policy: AddressPolicy | None = None,
                 max_redirects: int = DEFAULT_MAX_REDIRECTS, mirrors: Mapping[str, str] | None = None) -> None:
        """`mirror` replaces `https://huggingface.co` in every URL; when None it is read from `HF_MIRROR` or
        `HF_ENDPOINT` in `environ` (default: the process environment at construction). `mirrors` maps any other
        origin (e.g. `https://raw.githubusercontent.com`) to a replacement base URL; `FOCI_MIRRORS` in `environ`
        adds more as `ORIGIN=URL` pairs separated by spaces or commas. `retries` is the number of extra attempts
        after transient failures; the wait before retry k is `backoff * 2**(k-1)` seconds. `timeout` bounds each
        connect and each read; a file that receives no byte for `stall_timeout` seconds (retries included) fails.
        `known_sha256` (catalogue name → SHA-256, the config's `model_sha256`) overrides the catalogue's hashes;
        `hash_cache` holds the pins (trust on first use). Redirects obey `address_policy` (default: public
        addresses only, plus the host of each catalogue URL and of the mirror).
        """
        if retries < 0 or timeout <= 0 or stall_timeout <= 0 or backoff < 0 or chunk_size <= 0:
            raise ValueError("Downloader: retries and backoff must be >= 0, timeouts and chunk_size > 0")
        env = os.environ if environ is None else environ
        if mirror is None:
            mirror = env.get("HF_MIRROR") or env.get("HF_ENDPOINT") or None
        origins = parse_mirrors(env.get("FOCI_MIRRORS", ""))
        origins.update({_origin(key): _base_url(value) for key, value in (mirrors or {}).items()})
        if mirror is not None:
            origins[HF_ENDPOINT] = _base_url(mirror)
        self.mirrors: dict[str, str] = origins
        self.mirror = origins.get(HF_ENDPOINT)
        self.offline = offline
        self.retries = retries
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.backoff = backoff
        self.progress = progress
        self.chunk_size = chunk_size
        self.hash_cache = hash_cache
        self.known_sha256 = dict(known_sha256 or {})
        self.address_policy = address_policy or AddressPolicy()
        self.max_redirects = max_redirects
        self._sleep = sleep
        if user_agent is None:
            from foci import __version__

            user_agent = f"foci/{__version__}"
        self._user_agent = user_agent
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def resolve_url(self, url: str) -> str:
        """The URL actually requested: the URL's origin replaced by its mirror, if one is configured."""
        for origin, base in self.mirrors.items():
            if url == origin or url.startswith(origin + "/"):
                return base + url[len(origin):]
        return url

    def expected_sha256(self, entry: CatalogueEntry) -> tuple[str | None, str]:
        """`(sha256, where it comes from)` for `entry`: config, catalogue, pin or first download; `(None, "")`."""
        known = self.known_sha256.get(entry.name)
        if known:
            return known.lower(), "config model_sha256"
        if entry.sha256 is not None:
            return entry.sha256, "catalogue"
        pin = self.hash_cache.pinned(entry.name) if self.hash_cache is not None else None
        if pin is not None:
            return pin.sha256, pin.source
        return None, ""

    def fetch(self, entry: CatalogueEntry, folder: str | Path, *, progress: ProgressCallback | None = None) -> Path:
        """Make `entry` present in `folder` and return its path; see the module docstring for the guarantees.

        An existing file of the right size (and SHA-256, when known) is returned without any network access;
        one that does not match is renamed `*.corrupted` and downloaded again (offline: a DownloadError).
        `progress` gets this call's reports too (besides the downloader's own callback).
        """
        folder = Path(folder)
        final = folder / entry.file_name
        with self._lock_for(final):
            if final.exists():
                problem = self._existing_problem(entry, final)
                if problem is None:
                    self._emit_present(entry, final, progress)
                    return final
                if self.offline:
                    raise DownloadError(f"offline: {final} is not the expected {entry.name} ({problem}); "
                                        f"replace it with the file from {self.resolve_url(entry.url)}")
                from foci.files.hash_cache import mark_corrupted

                moved = mark_corrupted(final)
                logger.warning("%s: %s; moved to %s and downloading again", final, problem, moved.name)
            if self.offline:
                raise DownloadError(offline_message([(entry, folder)], self))
            return self._download(entry, final, progress)

    def ensure(self, names: Sequence[str], folders: ModelFolders,
               catalogue: Mapping[str, CatalogueEntry] | None = None, *,
               progress: ProgressCallback | None = None) -> list[Path]:
        """Paths of the named catalogue files, downloading the missing ones into their kind's download folder.

        A file already in any folder of its kind is used where it is. Offline, every missing file is listed in
        one DownloadError. The first failed download ends the call (:meth:`fetch_missing` tries every file).
        """
        catalogue = load_catalogue() if catalogue is None else catalogue
        entries = [_lookup(catalogue, name) for name in names]
        if self.offline:
            missing = missing_files(names, folders, catalogue)
            if missing:
                raise DownloadError(offline_message([(e, folders.download_folder(e.folder)) for e in missing], self))
        paths = []
        for entry in entries:
            found = folders.find(entry.folder, entry.file_name)
            if found is not None and self._existing_problem(entry, found) is None:
                self._emit_present(entry, found, progress)
                paths.append(found)
            else:
                paths.append(self.fetch(entry, folders.download_folder(entry.folder), progress=progress))
        return paths

    def fetch_missing(self, names: Sequence[str], folders: ModelFolders,
                      catalogue: Mapping[str, CatalogueEntry] | None = None, *,
                      progress: ProgressCallback | None = None) -> list[DownloadFailure]:
        """Try every named file that is not in place (unlike :meth:`ensure`, a failure does not stop the others)
        and return the failures. Once a host cannot be reached at all, its further files are not tried."""
        from foci.files.download_hints import is_connection_failure

        catalogue = load_catalogue() if catalogue is None else catalogue
        failures: list[DownloadFailure] = []
        dead_hosts: set[str] = set()
        for entry in [_lookup(catalogue, name) for name in names]:
            folder = folders.download_folder(entry.folder)
            found = folders.find(entry.folder, entry.file_name)
            if found is not None and self._existing_problem(entry, found) is None:
                self._emit_present(entry, found, progress)
                continue
            url = self.resolve_url(entry.url)
            host = urlsplit(url).netloc or url  # host[:port]
            if self.offline:
                error = DownloadError("offline: not downloaded")
            elif host in dead_hosts:
                error = DownloadError(f"not tried: {host} did not answer for an earlier file")
            else:
                try:
                    self.fetch(entry, folder, progress=progress)
                    continue
                except DownloadError as failed:
                    error = failed
                    if is_connection_failure(failed):
                        dead_hosts.add(host)
            failures.append(DownloadFailure(entry, url, folder, error))
        return failures

    # ------------------------------------------------------------------------------------------------ internals

    def _attempt_timeout(self, state: _PartState) -> float:
        """The socket timeout of the next attempt: `timeout`, or less when the stall budget is nearly spent."""
        left = self.stall_timeout - (time.monotonic() - state.last_byte_at)
        return max(min(self.timeout, left), 0.05)

    def _lock_for(self, path: Path) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(path.absolute(), threading.Lock())

    def _existing_problem(self, entry: CatalogueEntry, path: Path) -> str | None:
        size = path.stat().st_size
        if entry.size is not None and size != entry.size:
            return f"size {size} bytes, expected {entry.size}"
        expected, source = self.expected_sha256(entry)
        if expected is not None:
            if self.hash_cache is not None:
                digest = self.hash_cache.sha256(path)
            else:
                from foci.files.hashing import sha256_file

                digest = sha256_file(path)
            if digest != expected:
                logger.error("%s: sha256 %s differs from the %s sha256 %s", path, digest, source, expected)
                return f"sha256 {digest}, expected {expected} ({source})"
        return None

    def _emit_present(self, entry: CatalogueEntry, path: Path, listener: ProgressCallback | None) -> None:
        """Report a file that is already in place as done."""
        self._emit(entry.name, path.stat().st_size, entry.size, True, _PartState(length=0, digest=None,
                                                                                 listener=listener))

    def _emit(self, name: str, downloaded: int, total: int | None, done: bool, state: _PartState) -> None:
        callbacks = [callback for callback in (self.progress, state.listener) if callback is not None]
        if not callbacks:
            return
        now = time.monotonic()
        if state.rate_origin is None or downloaded < state.rate_origin[1]:
            state.rate_origin = (now, downloaded)  # the start, or a restart from zero
        since, origin_bytes = state.rate_origin
        speed = (downloaded - origin_bytes) / (now - since) if now - since >= 0.05 and downloaded > origin_bytes \
            else None
        eta = max(total - downloaded, 0) / speed if speed and total is not None and not done else None
        event = DownloadProgress(name=name, downloaded=downloaded, total=total, done=done, bytes_per_second=speed,
                                 eta_seconds=eta)
        for callback in callbacks:
            callback(event)

    def _download(self, entry: CatalogueEntry, final: Path, listener: ProgressCallback | None = None) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        url = self.resolve_url(entry.url)
        state = _PartState(length=-1, digest=None, last_byte_at=time.monotonic(), listener=listener)
        failures = 0
        while True:
            before = max(state.length, 0)
            try:
                self._attempt(entry, url, part, state)
                break
            except _Restart as exc:
                logger.info("%s: %s; restarting from zero", entry.name, exc)
                part.unlink(missing_ok=True)
                state.length = -1
                failures += 1
                if failures > self.retries:
                    raise DownloadError(f"could not download {entry.name} from {url}: {exc}") from exc
                continue
            except _Transient as exc:
                if state.length > before:
                    failures = 0  # progress was made: the failure budget starts again
                failures += 1
                delay = self.backoff * 2 ** (failures - 1)
                silent = time.monotonic() - state.last_byte_at
                if failures > self.retries or silent + delay >= self.stall_timeout:
                    kept = f" (the partial file {part} is kept for resuming)" if part.exists() else ""
                    stalled = f", no data for {silent:.0f} s" if failures <= self.retries else ""
                    raise DownloadError(f"could not download {entry.name} from {url} after {failures} attempts"
                                        f"{stalled}: {exc}{kept}") from exc
                logger.warning("%s: %s; retry %d/%d in %.1f s", entry.name, exc, failures, self.retries, delay)
                if delay > 0:
                    self._sleep(delay)
        return self._finish(entry, url, part, final, state)

    def _attempt(self, entry: CatalogueEntry, url: str, part: Path, state: _PartState) -> None:
        offset = part.stat().st_size if part.exists() else 0
        if entry.size is not None and offset > entry.size:
            raise _Restart(f"{part.name} is larger ({offset} bytes) than the expected {entry.size}")
        if state.length != offset:
            state.length, state.digest = offset, _hash_prefix(part, offset)
        if entry.size is not None and offset == entry.size:
            return  # a complete .part left by an interrupted run: only verification is left
        request = urllib.request.Request(url, headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        policy = self.address_policy.allowing(urlsplit(url).hostname or "", urlsplit(self.mirror or "").hostname or "")
        try:
            response = open_url(request, policy, timeout=self._attempt_timeout(state),
                                max_redirects=self.max_redirects)
        except AddressRefused as exc:
            raise DownloadError(f"refused to download {entry.name} from {url}: {exc}") from exc
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                total = _content_range(exc.headers.get("Content-Range"))[2]
                if total == offset:
                    return  # the .part already holds the whole file
                raise _Restart(f"server refused to resume at byte {offset}") from exc
            if exc.code in _RETRY_STATUS or exc.code >= 500:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
            raise DownloadError(f"HTTP {exc.code} {exc.reason} for {entry.name} from {url}"
                                f"{' (file not found: check the URL or mirror)' if exc.code == 404 else ''}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _Transient(f"cannot connect: {reason or type(reason).__name__}") from exc
        with response:
            status = response.status
            state.served_by = response.geturl()
            if offset and status == 200:
                logger.info("%s: server ignored the resume request; starting again from zero", entry.name)
                offset, state.length, state.digest = 0, 0, hashlib.sha256()
                self._emit(entry.name, 0, entry.size, False, state)
            elif status == 206:
                problem = _resume_problem(response, offset, entry.size or state.total)
                if problem is not None:
                    raise _Restart(f"{problem} ({state.served_by})")
            elif status != 200:
                raise DownloadError(f"unexpected HTTP {status} for {entry.name} from {url}")
            total = self._total(entry, response, offset, state)
            self._stream(entry, response, part, offset, total, state)

    def _total(self, entry: CatalogueEntry, response: http.client.HTTPResponse, offset: int,
               state: _PartState) -> int | None:
        total: int | None = None
        if response.status == 206:
            total = _content_range(response.headers.get("Content-Range"))[2]
        else:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None and entry.size is not None and total != entry.size:
            raise DownloadError(f"server reports {total} bytes for {entry.name}, the catalogue expects {entry.size}: "
                                f"wrong file or mirror ({response.url})")
        total = total if total is not None else entry.size
        if response.status == 200 and offset == 0:
            state.total = total
        return total

    def _stream(self, entry: CatalogueEntry, response: http.client.HTTPResponse, part: Path, offset: int,
                total: int | None, state: _PartState) -> None:
        self._emit(entry.name, offset, total, False, state)
        try:
            handle = open(part, "ab" if offset else "wb")  # noqa: SIM115 - closed in finally, writes checked
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
        try:
            while True:
                try:
                    chunk = response.read(self.chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost after {state.length} bytes: {exc or type(exc).__name__}") \
                        from exc
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
                state.digest.update(chunk)
                state.length += len(chunk)
                state.last_byte_at = time.monotonic()
                if total is not None and state.length > total:
                    raise _Restart(f"server sent more than the {total} bytes announced")
                self._emit(entry.name, state.length, total, False, state)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
        if total is not None and state.length < total:
            raise _Transient(f"connection closed after {state.length} of {total} bytes")

    def _finish(self, entry: CatalogueEntry, url: str, part: Path, final: Path, state: _PartState) -> Path:
        source_url = state.served_by or url
        if entry.size is not None and state.length != entry.size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"size mismatch for {entry.name} from {source_url}: expected {entry.size} bytes, "
                                f"got {state.length}; the download was deleted")
        digest = state.digest.hexdigest()
        logger.info("%s: sha256 %s (%d bytes)", entry.name, digest, state.length)
        expected, source = self.expected_sha256(entry)
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            hint = (f"; if the new file is intended, run `foci models pin {entry.name} {digest}`"
                    if source in ("first download", "pinned") else "")
            message = (f"checksum mismatch for {entry.name} from {source_url}: expected sha256 {expected} "
                       f"({source}), got {digest}; the download was deleted{hint}")
            logger.error("%s", message)
            raise DownloadError(message)
        self._check_content(entry, part, source_url)
        os.replace(part, final)
        if self.hash_cache is not None:
            self.hash_cache.record(final, digest)
            if expected is None:
                from foci.files.hash_cache import FIRST_DOWNLOAD

                self.hash_cache.pin(entry.name, digest, FIRST_DOWNLOAD)
                logger.info("%s: pinned sha256 %s (first download)", entry.name, digest)
        self._emit(entry.name, state.length, state.length, True, state)
        return final

    def _check_content(self, entry: CatalogueEntry, part: Path, source_url: str) -> None:
        """Delete the download and raise DownloadError unless it is what its name and kind say it is."""
        from foci.models.content import ContentError, check_model_file

        try:
            check_model_file(part, entry.file_name, entry.folder)
        except ContentError as error:
            part.unlink(missing_ok=True)
            message = (f"{entry.name} from {source_url} is not a valid {entry.folder} file: {error}; "
                       "the download was deleted")
            logger.error("%s", message)
            raise DownloadError(message) from None


@dataclass(frozen=True)
class DownloadFailure:
    """A file :meth:`Downloader.fetch_missing` could not make available: from where, to where, and why."""

    entry: CatalogueEntry
    url: str
    folder: Path
    error: DownloadError


def offline_message(missing: Sequence[tuple[CatalogueEntry, Path]], downloader: Downloader | None = None) -> str:
    """A DownloadError text listing each missing file, its URL and the folder to put it in."""
    lines = [f"offline: {len(missing)} model file(s) missing; download them and put them in place:"]
    for entry, folder in missing:
        url = downloader.resolve_url(entry.url) if downloader is not None else entry.url
        size = f", {entry.size} bytes" if entry.size is not None else ""
        lines.append(f"  {entry.file_name}{size}: {url} -> {folder / entry.file_name}")
    return "\n".join(lines)
