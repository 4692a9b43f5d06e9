"""Queue backends for the service tests: every test that takes ``queue_backend`` runs against SQLite and against
a throwaway PostgreSQL server started once per session (skipped, with the reason, when it cannot start)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from foci.service.jobs import SqlJobStore
from foci.service.queue import open_queue


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL server on loopback for the whole session (Debian's postgresql package)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'foci[scale]'): PostgreSQL tests skipped")
    from foci.dev.postgres_server import LocalPostgres, PostgresUnavailable

    folder = Path(tempfile.mkdtemp(prefix="foci-pg-"))  # not under pytest's root-only tmp folder
    try:
        server = LocalPostgres.start(folder)
    except PostgresUnavailable as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started: {error}")
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class QueueBackend:
    """One database of one backend: open stores on it, or reach it with plain SQL."""

    name: str
    spec: str

    def open(self, **options: Any) -> SqlJobStore:
        return open_queue(self.spec, **options)  # type: ignore[return-value]

    def execute(self, sql: str, params: tuple = ()) -> None:
        """One statement (``?`` placeholders) over a connection of its own."""
        if self.name == "sqlite":
            with sqlite3.connect(self.spec) as conn:
                conn.execute(sql, params)
            return
        import psycopg

        with psycopg.connect(self.spec, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_backend(request: pytest.FixtureRequest, tmp_path: Path) -> QueueBackend:
    if request.param == "sqlite":
        return QueueBackend("sqlite", str(tmp_path / "jobs.sqlite3"))
    server = request.getfixturevalue("postgres_server")
    return QueueBackend("postgresql", server.create_database())
