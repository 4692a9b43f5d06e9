"""The job queue in PostgreSQL (``foci serve --queue postgresql://USER@HOST/DB``): the same jobs, order, edits and
history as the SQLite store, shared by an API process and workers on any number of machines.

Claims lock their candidate rows with ``SELECT … FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on
each other and never take the same job; queue-order changes (submit, move) are serialised with a transaction-level
advisory lock. Needs ``psycopg`` 3 (``pip install 'foci[scale]'``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from foci.service.jobs import JobError, SqlJobStore

_QUEUE_LOCK_KEY = 0x666F6369  # "foci": the advisory lock serialising queue-order changes
_CONNECT_TIMEOUT_S = 10
_TYPES = (("REAL", "DOUBLE PRECISION"),)


def is_postgres_url(spec: str) -> bool:
    """True for ``postgresql://…`` and ``postgres://…`` queue specs."""
    return isinstance(spec, str) and spec.split("://", 1)[0].lower() in ("postgresql", "postgres")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresJobStore(SqlJobStore):
    """Jobs in a PostgreSQL database (see the module docstring). One connection per store, guarded by a lock."""

    def __init__(self, url: str, *, progress_flush_interval: float = 1.0) -> None:
        super().__init__(progress_flush_interval=progress_flush_interval)
        self.url = url
        try:
            import psycopg
        except ImportError:
            raise JobError("a PostgreSQL queue needs psycopg 3: pip install 'foci[scale]' "
                           "(or 'psycopg[binary]')") from None
        self._psycopg = psycopg
        self._lock = threading.RLock()
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)
        except psycopg.Error as error:
            raise JobError(f"cannot reach the job database {redact(url)}: {_first_line(error)}") from None
        try:
            self._migrate()
        except psycopg.Error as error:
            self._conn.close()
            raise JobError(f"cannot prepare the job database {redact(url)}: {_first_line(error)}") from None
        except JobError as error:
            self._conn.close()
            raise JobError(f"cannot open the job database {redact(url)}: {error}") from None

    def __repr__(self) -> str:
        return f"PostgresJobStore({redact(self.url)!r})"

    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        return conn.execute(sql.replace("?", "%s"), tuple(params))

    @contextmanager
    def _write(self, *, serial: bool = False) -> Iterator[Any]:
        with self._lock, self._conn.transaction():
            if serial:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_QUEUE_LOCK_KEY,))
            yield self._conn

    def _lock_clause(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    def _schema_version(self, conn: Any) -> int | None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_QUEUE_LOCK_KEY,))  # two starting processes migrate once
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def _migration_sql(self, statement: str) -> str:
        for sqlite_type, postgres_type in _TYPES:
            statement = re.sub(rf"\b{sqlite_type}\b", postgres_type, statement)
        if statement.startswith("CREATE TABLE IF NOT EXISTS jobs"):  # a stable tie-break, like SQLite's rowid
            statement = statement.rstrip().removesuffix(")") + ",\n            rowid BIGSERIAL)"
        return statement.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
