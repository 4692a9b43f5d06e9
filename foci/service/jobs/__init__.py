"""The job queue: a store of generation jobs that survives restarts and crashes — SQLite here (the embedded
default), PostgreSQL in :mod:`foci.service.postgres`; both share this package's logic (:class:`SqlJobStore`).

Every job moves ``queued → running → done | failed | cancelled`` (``queued → cancelled`` directly when cancelled
before it starts) and ends exactly once. The queue order is ``priority`` (higher first), then ``position`` (a real
column, smaller first: FIFO for plain submissions, changed by :meth:`JobStore.move`).

    store = JobStore(Path("jobs.sqlite3"))
    store.recover()                                   # once at start-up: jobs left running by a crash re-queue
    job = store.submit(task, priority=0)
    claimed = store.claim_next()                      # a worker: queued → running
    store.complete(claimed.id, [JobImage(path="2026-01-01/x.png", seed=1, width=64, height=64)])

One connection per store (``check_same_thread=False``) guarded by a lock; WAL journal and a busy timeout, so several
processes may share one file (each claim is one ``BEGIN IMMEDIATE`` transaction).

Workers on other processes or machines claim with a *lease* (``claim_next(worker=ID, lease_seconds=S)``) that they
renew with :meth:`SqlJobStore.heartbeat`; a job whose lease ran out (its worker died) goes back to the queue exactly
once, at the next claim by any worker, and the dead worker can no longer complete it. Without a lease (the embedded
worker) a crash is repaired by :meth:`SqlJobStore.recover` at the next start, as before.

The package: ``records`` (jobs, states, progress, worker reports, errors), ``table`` (columns, migrations, row
encoding and decoding), ``store`` (:class:`SqlJobStore`, the queue's logic) and ``sqlite`` (:class:`JobStore`).
"""

from __future__ import annotations

from foci.service.jobs.records import (
    FINAL_STATES,
    ClaimChooser,
    DownloadStatus,
    Job,
    JobError,
    JobImage,
    JobProgress,
    JobState,
    UnknownJobError,
    WorkerInfo,
)
from foci.service.jobs.sqlite import JobStore
from foci.service.jobs.store import DEFAULT_MAX_ATTEMPTS, MAX_LIST_LIMIT, WORKER_MAX_AGE, SqlJobStore
from foci.service.jobs.table import MIGRATIONS, SCHEMA_VERSION, decode_row, row_dict, row_to_job, unreadable_job

__all__ = [
    "DEFAULT_MAX_ATTEMPTS", "FINAL_STATES", "MAX_LIST_LIMIT", "MIGRATIONS", "SCHEMA_VERSION", "WORKER_MAX_AGE",
    "ClaimChooser", "DownloadStatus", "Job", "JobError", "JobImage", "JobProgress", "JobState", "JobStore",
    "SqlJobStore", "UnknownJobError", "WorkerInfo", "decode_row", "row_dict", "row_to_job", "unreadable_job",
]
