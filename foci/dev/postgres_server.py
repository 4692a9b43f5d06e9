"""A throwaway PostgreSQL server on loopback, for tests and benchmarks (never for real data: fsync is off).

    with LocalPostgres.start(tmp_dir) as server:      # PostgresUnavailable when Debian's postgresql is missing
        url = server.create_database()                # a fresh, empty database each call

Uses Debian's ``postgresql`` package binaries (``/usr/lib/postgresql/<version>/bin``) or ``initdb`` on the PATH.
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

_USER = "foci"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here (the message says why)."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalPostgres:
    """A running throwaway server; :meth:`stop` (or leaving the ``with`` block) removes it."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: str | None

    @classmethod
    def start(cls, folder: Path) -> LocalPostgres:
        """initdb + pg_ctl start in ``folder`` (created), on 127.0.0.1 and a free port."""
        bin_dir = _bin_dir()
        run_as = "postgres" if os.geteuid() == 0 else None
        if run_as and shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root and `runuser` is missing: cannot start PostgreSQL")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(folder, user=run_as)
            folder.chmod(0o700)
        server = cls(bin_dir, folder / "data", _free_port(), run_as)
        server._run("initdb", "-D", str(server.data_dir), "-A", "trust", "-U", _USER, "--no-sync", "-E", "UTF8")
        options = (f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server._run("pg_ctl", "-D", str(server.data_dir), "-o", options, "-l", str(folder / "server.log"), "-w",
                    "-t", "60", "start")
        return server

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            output = getattr(error, "stderr", "") or getattr(error, "stdout", "") or str(error)
            raise PostgresUnavailable(f"{program} failed: {output.strip().splitlines()[-1:] or error}") from None

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"foci_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        with contextlib.suppress(PostgresUnavailable):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
