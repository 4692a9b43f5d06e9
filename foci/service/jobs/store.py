"""The queue's logic over any SQL connection: submit, claim with leases, finish, edit, reorder, worker reports.

One class, kept whole (a little over 500 lines): every method works on the same connection, lock and in-memory
progress, and the dialect hooks the SQLite and PostgreSQL stores override sit among them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError
from typing_extensions import Self

from foci.service.jobs.records import (
    FINAL_STATES,
    ClaimChooser,
    Job,
    JobError,
    JobImage,
    JobProgress,
    JobState,
    UnknownJobError,
    WorkerInfo,
    _check_int,
    _check_webhook_url,
)
from foci.service.jobs.table import _QUEUE_ORDER, _SELECT, MIGRATIONS, SCHEMA_VERSION, _task_json, row_dict, row_to_job
from foci.task import GenerationTask, check_text, encodable

DEFAULT_MAX_ATTEMPTS = 3
WORKER_MAX_AGE = 15.0  # seconds without a report after which a worker counts as gone
MAX_LIST_LIMIT = 10_000


_MIN_GAP = 1e-9  # below this gap between two positions the queue is renumbered


class SqlJobStore:
    """The queue's logic over a DB-API-like connection, for any SQL dialect the subclasses speak (see
    :mod:`foci.service.jobs`). Thread-safe: one connection per store, guarded by a lock.

    ``progress_flush_interval``: :meth:`set_progress` keeps the newest progress in memory (what :meth:`get` and
    :meth:`list` return for a running job) and writes it to the database at most this often per job.
    """

    #: how many queued jobs a claim with a chooser looks at
    max_candidates = 64

    def __init__(self, *, progress_flush_interval: float = 1.0) -> None:
        self.progress_flush_interval = progress_flush_interval
        self._lock = threading.RLock()
        self._live_progress: dict[str, JobProgress] = {}
        self._progress_written: dict[str, float] = {}
        self._conn: Any = None

    # ----------------------------------------------------------------------------------------- dialect hooks
    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        """Run one statement written with ``?`` placeholders; returns a cursor."""
        return conn.execute(sql, tuple(params))

    @contextmanager
    def _write(self, *, serial: bool = False) -> Iterator[Any]:
        """One write transaction; ``serial``: also exclusive of other serial writers (queue-order changes)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _lock_clause(self) -> str:
        """What a claim appends to its candidate query to lock the rows it may take."""
        return ""

    def _schema_version(self, conn: Any) -> int | None:
        raise NotImplementedError

    def _migration_sql(self, statement: str) -> str:
        return statement

    def _migrate(self) -> None:
        with self._write(serial=True) as conn:
            version = self._schema_version(conn) or 0
            if version > SCHEMA_VERSION:
                raise JobError(f"the job database was written by a newer Foci (job schema {version}, this one "
                               f"knows {SCHEMA_VERSION})")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    self._exec(conn, self._migration_sql(statement))
            if version == 0:
                self._exec(conn, "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                self._exec(conn, "UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # ----------------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close the database connection (the store cannot be used afterwards)."""
        with self._lock:
            self._flush_all_progress()
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _row(self, conn: Any, job_id: str) -> dict[str, Any]:
        if not isinstance(job_id, str):
            raise UnknownJobError(f"job id must be a string, got {job_id!r}")
        try:
            check_text(job_id)
        except ValueError:
            raise UnknownJobError(f"no job with id {encodable(job_id)!r}") from None
        row = self._exec(conn, f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job with id {job_id!r}")
        return row_dict(row)

    def _to_job(self, row: dict[str, Any]) -> Job:
        """The job a row holds; a row this Foci cannot decode becomes a failed job marked ``unreadable``."""
        return row_to_job(row, self._live_progress)

    def _get(self, conn: Any, job_id: str) -> Job:
        return self._to_job(self._row(conn, job_id))

    def _forget_progress(self, conn: Any, job_id: str) -> None:
        """Write a job's newest in-memory progress (it is ending) and drop the memory copy."""
        progress = self._live_progress.pop(job_id, None)
        self._progress_written.pop(job_id, None)
        if progress is not None:
            self._exec(conn, "UPDATE jobs SET progress = ? WHERE id = ?", (progress.model_dump_json(), job_id))

    def _flush_all_progress(self) -> None:
        if not self._live_progress:
            return
        with self._write() as conn:
            for job_id, progress in self._live_progress.items():
                self._exec(conn, "UPDATE jobs SET progress = ? WHERE id = ? AND state = ?",
                             (progress.model_dump_json(), job_id, JobState.RUNNING.value))

    @staticmethod
    @staticmethod
    def _require_holder(row: dict[str, Any], worker: str | None, action: str) -> None:
        """With a worker given, the job must still be that worker's (running under its claim)."""
        if worker is not None and not (row["state"] == JobState.RUNNING.value and row["worker"] == worker):
            raise JobError(f"cannot {action} job {row['id']}: worker {worker} no longer holds it (its lease ran "
                           f"out; the job is {row['state']})")

    @staticmethod
    def _require(job: dict[str, Any], *states: JobState, action: str) -> None:
        if job["state"] not in {state.value for state in states}:
            allowed = " or ".join(state.value for state in states)
            raise JobError(f"cannot {action} job {job['id']}: it is {job['state']} (only {allowed} jobs)")

    # ----------------------------------------------------------------------------------------- submitting
    def submit(self, task: GenerationTask, *, priority: int = 0, webhook_url: str | None = None) -> Job:
        """Queue a task behind every queued job of the same priority; returns the new job."""
        if not isinstance(task, GenerationTask):
            raise JobError(f"task must be a GenerationTask, got {type(task).__name__}")
        priority = _check_int("priority", priority)
        webhook_url = _check_webhook_url(webhook_url)
        job_id = uuid.uuid4().hex
        with self._write(serial=True) as conn:
            (last,) = self._exec(conn, "SELECT MAX(position) FROM jobs").fetchone()
            self._exec(conn,
                "INSERT INTO jobs (id, task, state, priority, position, created_at, webhook_url) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, _task_json(task), JobState.QUEUED.value, priority,
                 (last or 0.0) + 1.0, time.time(), webhook_url))
            return self._get(conn, job_id)

    # ----------------------------------------------------------------------------------------- reading
    def get(self, job_id: str) -> Job:
        """The job with this id; :class:`UnknownJobError` if there is none."""
        with self._lock:
            return self._get(self._conn, job_id)

    def list(self, *, states: Sequence[JobState] | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """Jobs in display order: running first, then queued in queue order, then the rest newest first."""
        where, params = self._state_filter(states)
        limit, offset = _check_int("limit", limit), _check_int("offset", offset)
        if not 0 <= limit <= MAX_LIST_LIMIT or offset < 0:
            raise JobError(f"limit must be 0…{MAX_LIST_LIMIT} and offset ≥ 0, got limit={limit}, offset={offset}")
        order = ("CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, "
                 "CASE state WHEN 'queued' THEN -priority ELSE 0 END, "
                 "CASE state WHEN 'queued' THEN position ELSE 0 END, created_at DESC, rowid DESC")
        with self._lock:
            rows = self._exec(self._conn, f"{_SELECT}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                                      (*params, limit, offset)).fetchall()
            return [self._to_job(row_dict(row)) for row in rows]

    def count(self, *, states: Sequence[JobState] | None = None) -> int:
        """How many jobs are in the given states (all jobs without ``states``)."""
        where, params = self._state_filter(states)
        with self._lock:
            return self._exec(self._conn, f"SELECT COUNT(*) FROM jobs{where}", params).fetchone()[0]

    def queue_position(self, job_id: str) -> int | None:
        """0 for the job that runs next, 1 for the one after …; None when the job is not queued."""
        with self._lock:
            row = self._row(self._conn, job_id)
            if row["state"] != JobState.QUEUED.value:
                return None
            (ahead,) = self._exec(self._conn,
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (priority > ? OR (priority = ? AND "
                "(position < ? OR (position = ? AND (created_at < ? OR (created_at = ? AND id < ?))))))",
                (row["priority"], row["priority"], row["position"], row["position"], row["created_at"],
                 row["created_at"], row["id"])).fetchone()
            return ahead

    @staticmethod
    def _state_filter(states: Sequence[JobState] | None) -> tuple[str, tuple[str, ...]]:
        if states is None:
            return "", ()
        try:
            values = tuple(JobState(state).value for state in states)
        except ValueError as error:
            raise JobError(f"{error}; states are {', '.join(s.value for s in JobState)}") from None
        if not values:
            return " WHERE 1 = 0", ()
        return f" WHERE state IN ({', '.join('?' * len(values))})", values

    # ----------------------------------------------------------------------------------------- the worker's side
    def claim_next(self, *, worker: str | None = None, lease_seconds: float | None = None,
                   chooser: ClaimChooser | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Job | None:
        """Atomically take the first queued job (queued → running, ``attempts`` + 1); None when none waits.
        A queued job this Foci cannot read is marked failed on the way (it is never handed to a worker).

        ``worker`` records who runs it; ``lease_seconds`` makes the claim a lease that :meth:`heartbeat` renews
        (jobs whose lease ran out are re-queued first, see :meth:`requeue_expired`); ``chooser`` picks among the
        first queued jobs instead of taking the first (model affinity) and may take none.
        """
        with self._write() as conn:
            now = time.time()
            self._requeue(conn, "lease_until < ?", (now,), max_attempts, now)
            while True:
                job_id = self._pick(conn, chooser, now)
                if job_id is None:
                    return None
                queued = self._to_job(self._row(conn, job_id))
                if not queued.unreadable:
                    break
                self._exec(conn, "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                           (time.time(), queued.error, job_id))
            lease_until = now + lease_seconds if lease_seconds is not None else None
            self._exec(conn, "UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, error = NULL, "
                       "progress = NULL, attempts = attempts + 1, cancel_requested = 0, worker = ?, lease_until = ? "
                       "WHERE id = ?", (time.time(), worker, lease_until, job_id))
            return self._get(conn, job_id)

    def _pick(self, conn: Any, chooser: ClaimChooser | None, now: float) -> str | None:
        limit = 1 if chooser is None else self.max_candidates
        rows = self._exec(conn, f"{_SELECT} WHERE state = 'queued' ORDER BY {_QUEUE_ORDER} LIMIT ?"
                          f"{self._lock_clause()}", (limit,)).fetchall()
        if not rows:
            return None
        candidates = [self._to_job(row_dict(row)) for row in rows]
        unreadable = next((job.id for job in candidates if job.unreadable), None)
        if chooser is None or unreadable is not None:
            return unreadable or candidates[0].id
        chosen = chooser.choose(candidates, self._live_workers(conn, now), now)
        if chosen is not None and chosen not in {job.id for job in candidates}:
            raise JobError(f"the chooser picked {chosen!r}, which is not one of the queued candidates")
        return chosen

    def heartbeat(self, job_id: str, worker: str, lease_seconds: float) -> bool:
        """Renew ``worker``'s lease on a running job; False when it no longer holds it (the lease ran out and the
        job was re-queued, or the job ended) — the worker should then abandon it."""
        with self._write() as conn:
            cursor = self._exec(conn, "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND "
                                "state = 'running'", (time.time() + lease_seconds, job_id, worker))
            return cursor.rowcount == 1

    def holds(self, job_id: str, worker: str) -> bool:
        """True while ``worker`` runs ``job_id`` (its claim has not been taken away)."""
        with self._lock:
            row = self._exec(self._conn, "SELECT state, worker FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row[0] == JobState.RUNNING.value and row[1] == worker

    def requeue_expired(self, *, include_unleased: bool = False,
                        max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[str]:
        """Running jobs whose lease ran out (their worker died) go back to the queue at their old place, once
        (ids returned); with ``include_unleased`` also running jobs claimed without a lease (an embedded worker
        that died). Like :meth:`recover`, a pending cancel ends the job cancelled and ``max_attempts`` ends it
        failed. Every claim does this first, so a dead worker's job is re-run by the next worker that looks."""
        with self._write() as conn:
            now = time.time()
            where = "(lease_until < ? OR lease_until IS NULL)" if include_unleased else "lease_until < ?"
            return self._requeue(conn, where, (now,), max_attempts, now)

    def _requeue(self, conn: Any, where: str, params: Sequence[object], max_attempts: int, now: float) -> list[str]:
        """Re-queue (or end) the running jobs matching ``where``; returns the re-queued ids in queue order."""
        rows = self._exec(conn, f"SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running' AND "
                          f"{where} ORDER BY {_QUEUE_ORDER}{self._lock_clause()}", params).fetchall()
        requeued: list[str] = []
        for job_id, attempts, cancel in rows:
            self._live_progress.pop(job_id, None)
            self._progress_written.pop(job_id, None)
            if cancel:
                self._exec(conn, "UPDATE jobs SET state = 'cancelled', finished_at = ?, lease_until = NULL "
                           "WHERE id = ?", (now, job_id))
            elif attempts >= max_attempts:
                self._exec(conn, "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, lease_until = NULL "
                           "WHERE id = ?", (now, f"the process stopped while running this job {attempts} times; "
                                            "giving up", job_id))
            else:
                self._exec(conn, "UPDATE jobs SET state = 'queued', started_at = NULL, progress = NULL, "
                           "lease_until = NULL WHERE id = ?", (job_id,))
                requeued.append(job_id)
        return requeued

    def complete(self, job_id: str, images: list[JobImage], *, skipped_images: int = 0,
                 worker: str | None = None) -> Job:
        """A running job finished: done, or cancelled when a cancel was requested meanwhile (the images it made
        are kept either way). A job that is already cancelled stays as it is. With ``worker``, only that worker's
        claim may complete it (a worker whose lease ran out gets a :class:`JobError`)."""
        images = [image if isinstance(image, JobImage) else JobImage.model_validate(image) for image in images]
        skipped_images = _check_int("skipped_images", skipped_images)
        return self._finish(job_id, JobState.DONE, "complete", worker,
                            images=json.dumps([i.model_dump(mode="json") for i in images]),
                            skipped_images=skipped_images)

    def fail(self, job_id: str, error: str, *, worker: str | None = None) -> Job:
        """A running job raised: failed with ``error`` (cancelled when a cancel was requested meanwhile)."""
        message = encodable(" ".join(str(error).split())) or "unknown error"
        return self._finish(job_id, JobState.FAILED, "fail", worker, error=message)

    def _finish(self, job_id: str, state: JobState, action: str, worker: str | None, **columns: object) -> Job:
        """End a running job in ``state`` (cancelled instead when a cancel was requested), setting ``columns``."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            self._require_holder(row, worker, action)
            if row["state"] == JobState.CANCELLED.value:
                return self._to_job(row)
            self._require(row, JobState.RUNNING, action=action)
            final = JobState.CANCELLED if row["cancel_requested"] else state
            self._forget_progress(conn, job_id)
            assignments = "".join(f", {name} = ?" for name in columns)  # names are this class's own literals
            self._exec(conn, f"UPDATE jobs SET state = ?, finished_at = ?, lease_until = NULL{assignments} "
                       "WHERE id = ?",
                         (final.value, time.time(), *columns.values(), job_id))
            return self._get(conn, job_id)

    def release(self, job_id: str, *, worker: str | None = None) -> Job:
        """Give a running job back to the queue (its worker is shutting down): it keeps its place and this run
        does not count as an attempt. A job whose cancel was requested is cancelled instead."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            self._require_holder(row, worker, "release")
            self._require(row, JobState.RUNNING, action="release")
            self._forget_progress(conn, job_id)
            if row["cancel_requested"]:
                self._exec(conn, "UPDATE jobs SET state = 'cancelled', finished_at = ?, lease_until = NULL "
                           "WHERE id = ?", (time.time(), job_id))
            else:
                self._exec(conn, "UPDATE jobs SET state = 'queued', started_at = NULL, progress = NULL, "
                           "lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                           "WHERE id = ?", (job_id,))
            return self._get(conn, job_id)

    def cancel(self, job_id: str) -> Job:
        """Queued → cancelled at once; running → ``cancel_requested`` (the worker stops it and it ends cancelled);
        already cancelled → unchanged. Done and failed jobs cannot be cancelled."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            state = row["state"]
            if state == JobState.QUEUED.value:
                self._exec(conn, "UPDATE jobs SET state = 'cancelled', finished_at = ?, cancel_requested = 1 "
                             "WHERE id = ?", (time.time(), job_id))
            elif state == JobState.RUNNING.value:
                self._exec(conn, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            elif state != JobState.CANCELLED.value:
                raise JobError(f"cannot cancel job {job_id}: it is already {state}")
            return self._get(conn, job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job was cancelled or a cancel of the running job is pending."""
        with self._lock:
            row = self._exec(self._conn, "SELECT state, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job with id {job_id!r}")
        return row[0] == JobState.CANCELLED.value or bool(row[1])

    def set_progress(self, job_id: str, progress: JobProgress) -> None:
        """Record a running job's progress: kept in memory at once, written to the file at most every
        ``progress_flush_interval`` seconds. Ignored for jobs that are not running (or unknown)."""
        now = time.monotonic()
        with self._lock:
            self._live_progress[job_id] = progress
            if now - self._progress_written.get(job_id, -1e18) < self.progress_flush_interval:
                return
            self._progress_written[job_id] = now
            cursor = self._exec(self._conn, "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                                        (progress.model_dump_json(), job_id))
            if cursor.rowcount == 0:
                self._live_progress.pop(job_id, None)
                self._progress_written.pop(job_id, None)

    def recover(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[str]:
        """At start-up, before any worker runs: jobs left ``running`` by a crash go back to the queue at their old
        place (ids returned). One whose cancel was pending ends cancelled; one that was already tried
        ``max_attempts`` times ends failed, so a job that kills the process cannot loop forever."""
        with self._write() as conn:
            return self._requeue(conn, "1 = 1", (), max_attempts, time.time())

    # ----------------------------------------------------------------------------------------- editing the queue
    def update_task(self, job_id: str, task: GenerationTask) -> Job:
        """Replace a queued job's task (it keeps its place)."""
        if not isinstance(task, GenerationTask):
            raise JobError(f"task must be a GenerationTask, got {type(task).__name__}")
        with self._write() as conn:
            self._require(self._row(conn, job_id), JobState.QUEUED, action="edit")
            self._exec(conn, "UPDATE jobs SET task = ? WHERE id = ?",
                         (_task_json(task), job_id))
            return self._get(conn, job_id)

    def set_priority(self, job_id: str, priority: int) -> Job:
        """Change a queued job's priority; among equal priorities it keeps its submission order."""
        priority = _check_int("priority", priority)
        with self._write() as conn:
            self._require(self._row(conn, job_id), JobState.QUEUED, action="reprioritise")
            self._exec(conn, "UPDATE jobs SET priority = ? WHERE id = ?", (priority, job_id))
            return self._get(conn, job_id)

    def move(self, job_id: str, *, before: str | None = None, to_front: bool = False, to_back: bool = False) -> Job:
        """Move a queued job right before another queued job, to the front or to the back of the queue.

        The job lands exactly there: it takes the priority of its new neighbour (``before``), the highest queued
        priority (``to_front``, unless its own is higher) or the lowest (``to_back``, unless its own is lower).
        """
        if (before is not None) + bool(to_front) + bool(to_back) != 1:
            raise JobError("move needs exactly one of before=<job id>, to_front=True, to_back=True")
        with self._write(serial=True) as conn:
            row = self._row(conn, job_id)
            self._require(row, JobState.QUEUED, action="move")
            if before is not None:
                if before == job_id:
                    raise JobError("cannot move a job before itself")
                target = self._row(conn, before)
                if target["state"] != JobState.QUEUED.value:
                    raise JobError(f"cannot move before job {before}: it is {target['state']}, not queued")
                priority, position = target["priority"], self._position_before(conn, job_id, target)
            elif to_front:
                priority, position = self._edge(conn, row, front=True)
            else:
                priority, position = self._edge(conn, row, front=False)
            self._exec(conn, "UPDATE jobs SET priority = ?, position = ? WHERE id = ?", (priority, position, job_id))
            return self._get(conn, job_id)

    def _position_before(self, conn: Any, job_id: str, target: dict[str, Any]) -> float:
        """A position between ``target`` and the queued job ahead of it (same priority), renumbering when the
        floating-point gap has run out."""
        for _ in range(2):
            ahead = self._exec(conn,
                "SELECT position FROM jobs WHERE state = 'queued' AND priority = ? AND position < ? AND id != ? "
                "ORDER BY position DESC LIMIT 1", (target["priority"], target["position"], job_id)).fetchone()
            if ahead is None:
                return target["position"] - 1.0
            middle = (ahead[0] + target["position"]) / 2.0
            if ahead[0] < middle < target["position"] and target["position"] - ahead[0] > _MIN_GAP:
                return middle
            self._renumber(conn, target["priority"])
            target = self._row(conn, target["id"])
        raise JobError("could not find a queue position; the queue is inconsistent")  # pragma: no cover

    def _renumber(self, conn: Any, priority: int) -> None:
        """Spread the queued jobs of one priority to whole-number positions, keeping their order."""
        rows = self._exec(conn, "SELECT id, position FROM jobs WHERE state = 'queued' AND priority = ? "
                            f"ORDER BY {_QUEUE_ORDER}", (priority,)).fetchall()
        if not rows:
            return
        start = float(int(rows[0][1]) - 1)
        for offset, (job_id, _) in enumerate(rows):
            self._exec(conn, "UPDATE jobs SET position = ? WHERE id = ?", (start + offset, job_id))

    def _edge(self, conn: Any, row: dict[str, Any], *, front: bool) -> tuple[int, float]:
        pick = "MAX" if front else "MIN"
        (extreme,) = self._exec(conn, f"SELECT {pick}(priority) FROM jobs WHERE state = 'queued' AND id != ?",
                                  (row["id"],)).fetchone()
        if extreme is None:
            return row["priority"], row["position"]
        priority = max(extreme, row["priority"]) if front else min(extreme, row["priority"])
        end = "MIN" if front else "MAX"
        (edge,) = self._exec(conn, f"SELECT {end}(position) FROM jobs WHERE state = 'queued' AND priority = ? "
                               "AND id != ?", (priority, row["id"])).fetchone()
        if edge is None:
            return priority, row["position"]
        return priority, edge - 1.0 if front else edge + 1.0

    def delete(self, job_id: str) -> None:
        """Remove a finished job from the history (its image files stay)."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            if self._to_job(row).state not in FINAL_STATES:
                raise JobError(f"cannot delete job {job_id}: it is {row['state']}; cancel it first")
            self._exec(conn, "DELETE FROM jobs WHERE id = ?", (job_id,))

    # ----------------------------------------------------------------------------------------- workers
    def report_worker(self, info: WorkerInfo) -> None:
        """Record what a worker holds and does (it calls this at start, after each claim and from its heartbeat)."""
        info = info.model_copy(update={"last_seen": time.time()})
        with self._write() as conn:
            self._exec(conn, "INSERT INTO workers (id, info, last_seen) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                       "SET info = excluded.info, last_seen = excluded.last_seen",
                       (info.id, info.model_dump_json(), info.last_seen))

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""
        with self._write() as conn:
            self._exec(conn, "DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self, *, max_age: float = WORKER_MAX_AGE) -> list[WorkerInfo]:
        """Workers heard from within ``max_age`` seconds, by name."""
        with self._lock:
            return self._live_workers(self._conn, time.time(), max_age)

    def _live_workers(self, conn: Any, now: float, max_age: float = WORKER_MAX_AGE) -> list[WorkerInfo]:
        rows = self._exec(conn, "SELECT info FROM workers WHERE last_seen >= ? ORDER BY id",
                          (now - max_age,)).fetchall()
        workers = []
        for (info,) in rows:
            try:
                workers.append(WorkerInfo.model_validate_json(info))
            except ValidationError:
                continue  # a row from another Foci version: not a peer this one can route with
        return sorted(workers, key=lambda worker: (worker.name, worker.id))
