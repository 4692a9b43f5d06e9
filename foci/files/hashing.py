"""File hashes for model provenance in image metadata (§1.11)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

_BLOCK_SIZE = 1 << 20
SHORT_HASH_LENGTH = 10


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks so large checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1024)
def _short_hash_of(resolved: str, size: int, mtime_ns: int) -> str:
    """Memoised worker: the key includes size and mtime so an edited file is hashed again."""
    del size, mtime_ns  # only part of the cache key
    return sha256_file(resolved)[:SHORT_HASH_LENGTH]


def short_hash(path: str | os.PathLike[str]) -> str:
    """First 10 hex characters of the file's SHA-256 (the A1111/Fooocus "model hash").

    Results are memoised per (resolved path, size, mtime_ns), so repeated calls for an unchanged
    multi-gigabyte checkpoint are free while a replaced or edited file is hashed afresh.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _short_hash_of(str(resolved), stat.st_size, stat.st_mtime_ns)
