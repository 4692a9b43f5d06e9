"""The SQLite job store, the embedded default (one file; WAL, so several processes may share it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foci.service.jobs.records import JobError
from foci.service.jobs.store import SqlJobStore

_BUSY_TIMEOUT_MS = 10_000


def _decode_text(data: bytes) -> str:
    """SQLite text as str; bytes that are not UTF-8 become lone surrogates, which :func:`row_to_job` then
    reports as an unreadable job instead of failing the whole query."""
    return data.decode("utf-8", "surrogateescape")


class JobStore(SqlJobStore):
    """Jobs in one SQLite file (see :mod:`foci.service.jobs`): the embedded default. Use one store per process and
    file; several processes may share the file."""

    def __init__(self, path: Path, *, progress_flush_interval: float = 1.0) -> None:
        super().__init__(progress_flush_interval=progress_flush_interval)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            self._conn.text_factory = _decode_text
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise JobError(f"cannot open the job database {self.path}: {error}") from None
        except JobError as error:
            self._conn.close()
            raise JobError(f"cannot open the job database {self.path}: {error}") from None

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    @contextmanager
    def _write(self, *, serial: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so concurrent writers queue up."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def _migration_sql(self, statement: str) -> str:
        if statement.startswith("ALTER TABLE jobs ADD COLUMN"):  # SQLite has no ADD COLUMN IF NOT EXISTS
            column = statement.split()[5]
            existing = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)").fetchall()}
            if column in existing:
                return "SELECT 1"
        return statement
