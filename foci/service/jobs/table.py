"""The ``jobs`` table: its columns and versioned migrations, and how jobs are written to and read from rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from foci.service.jobs.records import Job, JobImage, JobProgress, JobState
from foci.task import GenerationTask, check_text, encodable

SCHEMA_VERSION = 2


def _task_json(task: GenerationTask) -> str:
    """Only the fields the submitter set: defaults that depend on the performance mode (steps) must stay
    undecided until the engine applies the mode (a full dump would mark every field as chosen)."""
    return json.dumps(task.model_dump(mode="json", exclude_unset=True))


_COLUMNS = ("id", "task", "state", "priority", "position", "created_at", "started_at", "finished_at", "error",
            "images", "progress", "webhook_url", "attempts", "skipped_images", "cancel_requested", "worker",
            "lease_until")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
_QUEUE_ORDER = "priority DESC, position ASC, created_at ASC, rowid ASC"
# Versioned migrations: MIGRATIONS[v] takes a version v-1 database to version v (types written for SQLite; the
# PostgreSQL store translates them). A database newer than SCHEMA_VERSION is refused.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            position REAL NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            images TEXT NOT NULL DEFAULT '[]',
            progress TEXT,
            webhook_url TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            skipped_images INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority, position)",
        "CREATE INDEX IF NOT EXISTS jobs_position ON jobs (position)",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)"),
    2: ("ALTER TABLE jobs ADD COLUMN worker TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until REAL",
        """CREATE TABLE IF NOT EXISTS workers (
            id TEXT PRIMARY KEY,
            info TEXT NOT NULL,
            last_seen REAL NOT NULL)"""),
}


def _float_or(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def row_dict(values: Sequence[Any]) -> dict[str, Any]:
    """A fetched ``jobs`` row (selected with all columns, in order) by column name."""
    return dict(zip(_COLUMNS, values, strict=True))


def row_to_job(row: dict[str, Any], live_progress: Mapping[str, JobProgress]) -> Job:
    """The job a row holds; a row this Foci cannot decode becomes a failed job marked ``unreadable``."""
    try:
        return decode_row(row, live_progress)
    except (ValidationError, ValueError, TypeError, KeyError) as error:
        return unreadable_job(row, error)


def decode_row(row: dict[str, Any], live_progress: Mapping[str, JobProgress]) -> Job:
    """The job a row holds (a running job's progress from ``live_progress`` when it has one there); ValueError,
    TypeError, KeyError or ValidationError for a row this Foci cannot decode."""
    for name, value in row.items():
        if isinstance(value, str):
            try:
                check_text(value)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
    task = GenerationTask.model_validate(json.loads(row["task"]))
    progress = live_progress.get(row["id"]) if row["state"] == JobState.RUNNING.value else None
    if progress is None and row["progress"]:
        progress = JobProgress.model_validate_json(row["progress"])
    return Job(id=row["id"], task=task, state=JobState(row["state"]), priority=row["priority"],
               created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
               error=row["error"], images=[JobImage.model_validate(i) for i in json.loads(row["images"])],
               progress=progress, webhook_url=row["webhook_url"], attempts=row["attempts"],
               skipped_images=row["skipped_images"], cancel_requested=bool(row["cancel_requested"]),
               worker=row["worker"])


def unreadable_job(row: dict[str, Any], error: Exception) -> Job:
    """A failed job marked ``unreadable`` standing for a row that could not be decoded (``error``)."""
    job_id = encodable(str(row.get("id")))
    first = encodable(str(error).splitlines()[0] if str(error) else type(error).__name__)
    priority = row.get("priority")
    return Job(id=job_id, task=GenerationTask(), state=JobState.FAILED, unreadable=True,
               priority=priority if isinstance(priority, int) else 0,
               created_at=_float_or(row.get("created_at"), 0.0),
               finished_at=_float_or(row.get("finished_at"), _float_or(row.get("created_at"), 0.0)),
               error=f"job {job_id} holds data this Foci cannot read: {first}")
