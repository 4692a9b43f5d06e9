"""SHA-256 of model files cached on disk, pinned SHA-256 per catalogue name, `foci models verify`, and renaming
corrupt files (§1.14, §2.21)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from foci.files.downloads import CatalogueEntry, load_catalogue
from foci.files.folders import ModelFolders
from foci.files.hashing import SHORT_HASH_LENGTH, sha256_file

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_CACHE_NAME = ".foci_hashes.json"
FIRST_DOWNLOAD = "first download"
PINNED = "pinned"


@dataclass(frozen=True)
class Pin:
    """The SHA-256 a catalogue file must have: seen on its first download (trust on first use) or set by the user
    (`foci models pin`)."""

    sha256: str
    source: str  # FIRST_DOWNLOAD or PINNED


class HashCache:
    """SHA-256 per file, stored in a JSON file keyed by resolved path and valid while size and mtime_ns match;
    and the pinned SHA-256 per catalogue name (see :class:`Pin`).

    Safe to share between threads; every update rewrites the file atomically (temporary file + `os.replace`),
    merging entries another process may have written meanwhile. An unreadable cache file is ignored (rebuilt).
    """

    def __init__(self, cache_file: str | Path) -> None:
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._entries, self._pins = self._read()

    def sha256(self, path: str | Path) -> str:
        """Hex SHA-256 of `path`, from the cache when the file is unchanged, else computed and stored."""
        key, size, mtime_ns = _identity(path)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached.get("size") == size and cached.get("mtime_ns") == mtime_ns:
            return str(cached["sha256"])
        digest = sha256_file(key)
        if _identity(path) != (key, size, mtime_ns):
            return digest  # changed while being hashed: do not cache a hash that may not match
        self._store(key, size, mtime_ns, digest)
        return digest

    def short(self, path: str | Path) -> str:
        """First 10 hex digits of the SHA-256 (the A1111/Fooocus "model hash")."""
        return self.sha256(path)[:SHORT_HASH_LENGTH]

    def record(self, path: str | Path, sha256: str) -> None:
        """Store an already known SHA-256 for `path` as it is now (e.g. computed while downloading)."""
        key, size, mtime_ns = _identity(path)
        self._store(key, size, mtime_ns, sha256)

    def pinned(self, name: str) -> Pin | None:
        """The pinned SHA-256 of catalogue file `name`, if any."""
        with self._lock:
            self._pins.update(self._read()[1])
            raw = self._pins.get(name)
        return Pin(str(raw["sha256"]), str(raw.get("source", PINNED))) if raw is not None else None

    def pin(self, name: str, sha256: str, source: str = PINNED) -> None:
        """Pin catalogue file `name` to `sha256` (replacing an earlier pin)."""
        with self._lock:
            entries, pins = self._read()
            entries.update(self._entries)
            pins.update(self._pins)
            pins[name] = {"sha256": sha256, "source": source}
            self._entries, self._pins = entries, pins
            self._write(entries, pins)

    def sha256_many(self, paths: Iterable[str | Path], *, workers: int = 1) -> dict[Path, str]:
        """Hashes of many files with `workers` threads (`--rebuild-hash-cache [THREADS]`)."""
        unique = list(dict.fromkeys(Path(p) for p in paths))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return dict(zip(unique, pool.map(self.sha256, unique), strict=True))

    def _store(self, key: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            entries, pins = self._read()
            entries.update(self._entries)
            pins.update(self._pins)
            entries[key] = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256}
            self._entries, self._pins = entries, pins
            self._write(entries, pins)

    def _read(self) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
        try:
            document = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable hash cache %s: %s", self.cache_file, exc)
            return {}, {}
        entries = document.get("files") if isinstance(document, dict) else None
        if not isinstance(entries, dict) or document.get("format") != CACHE_FORMAT:
            logger.warning("ignoring hash cache %s of an unknown format", self.cache_file)
            return {}, {}
        pins = document.get("pins")
        return (_valid(entries), _valid(pins) if isinstance(pins, dict) else {})

    def _write(self, entries: Mapping[str, object], pins: Mapping[str, object]) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=self.cache_file.name + ".", suffix=".tmp",
                                             dir=self.cache_file.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump({"format": CACHE_FORMAT, "files": dict(sorted(entries.items())),
                           "pins": dict(sorted(pins.items()))}, stream, indent=1)
            os.replace(temporary, self.cache_file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def verify_files(folders: ModelFolders, catalogue: Mapping[str, CatalogueEntry] | None = None,
                 cache: HashCache | None = None, known: Mapping[str, str] | None = None) -> list[tuple[Path, str]]:
    """Check every catalogue file present in any model folder: `(path, status)` with status "ok",
    "corrupt: expected … got …" (size or SHA-256) or "unknown hash" (right size, no reference SHA-256).

    The reference SHA-256 is the first of `known` (the config's `model_sha256`), the catalogue's and the pin in
    `cache`.
    """
    catalogue = load_catalogue() if catalogue is None else catalogue
    known = known or {}
    results: list[tuple[Path, str]] = []
    for entry in catalogue.values():
        pin = cache.pinned(entry.name) if cache is not None else None
        expected = known.get(entry.name) or entry.sha256 or (pin.sha256 if pin is not None else None)
        for folder in folders.folders(entry.folder):
            path = folder / entry.file_name
            if not path.is_file():
                continue
            size = path.stat().st_size
            if entry.size is not None and size != entry.size:
                results.append((path, f"corrupt: expected {entry.size} bytes got {size}"))
            elif expected is None:
                results.append((path, "unknown hash"))
            else:
                digest = cache.sha256(path) if cache is not None else sha256_file(path)
                status = "ok" if digest == expected else f"corrupt: expected sha256 {expected} got {digest}"
                results.append((path, status))
    return results


def mark_corrupted(path: str | Path) -> Path:
    """Rename a bad model file to `<name>.corrupted` (replacing an older one) so it is downloaded again."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupted")
    os.replace(path, target)
    return target


def _valid(entries: Mapping[str, object]) -> dict[str, dict[str, object]]:
    return {key: value for key, value in entries.items()
            if isinstance(value, dict) and isinstance(value.get("sha256"), str)}


def _identity(path: str | Path) -> tuple[str, int, int]:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns
