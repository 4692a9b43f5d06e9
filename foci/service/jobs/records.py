"""The job records: states, jobs, their images and progress, worker reports, and the queue's errors."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from foci.task import GenerationTask


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True for done, failed and cancelled: nothing happens to the job any more."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class JobImage(BaseModel):
    """One image a job produced; ``path`` is relative to the output folder, with ``/`` separators."""

    path: str
    seed: int
    width: int
    height: int


class DownloadStatus(BaseModel):
    """A model file the job is downloading before it can sample."""

    file: str
    downloaded_bytes: int
    total_bytes: int | None = None
    bytes_per_second: float | None = None
    eta_seconds: float | None = None
    done: bool = False

    def describe(self) -> str:
        """``Downloading FILE … 12.3 MB / 6.9 GB, 4.5 MB/s, about 25 min left``."""
        from foci.files.download_hints import human_bytes

        total = f" / {human_bytes(self.total_bytes)}" if self.total_bytes is not None else ""
        text = f"Downloading {self.file} … {human_bytes(self.downloaded_bytes)}{total}"
        if self.done:
            return text + ", done"
        if self.bytes_per_second:
            text += f", {human_bytes(self.bytes_per_second)}/s"
        if self.eta_seconds is not None:
            eta = self.eta_seconds
            text += f", about {eta:.0f} s left" if eta < 90 else f", about {eta / 60:.0f} min left"
        return text


class JobProgress(BaseModel):
    """Where a running job is: overall percent, the current image and step, and an ETA; ``download`` while it
    downloads a model file (then step and total_steps are 0)."""

    percent: float
    step: int
    total_steps: int
    image_index: int
    image_count: int
    eta_seconds: float | None = None
    message: str = ""
    download: DownloadStatus | None = None


class Job(BaseModel):
    """A queued, running or finished generation task."""

    id: str
    task: GenerationTask
    state: JobState
    priority: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    images: list[JobImage] = Field(default_factory=list)
    progress: JobProgress | None = None
    webhook_url: str | None = None
    attempts: int = 0
    skipped_images: int = 0
    cancel_requested: bool = False
    worker: str | None = Field(None, description="the worker that runs (or last ran) the job")
    unreadable: bool = Field(False, description="the stored job could not be read; it is reported as failed")


class JobError(ValueError):
    """An unknown job or a change its state does not allow (editing a running job, completing a queued one…)."""


class UnknownJobError(JobError):
    """No job has this id."""


def _check_webhook_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str):
        raise JobError(f"webhook_url must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise JobError(f"webhook_url must be an http:// or https:// URL, got {url!r}")
    return url.strip()


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"{name} must be an integer, got {value!r}")
    return value


class WorkerInfo(BaseModel):
    """What a worker reports about itself (``/v1/health``, ``/metrics`` and model-affinity routing)."""

    id: str
    name: str
    node: str = ""
    state: str = "idle"  # idle, busy or stopped
    current_job: str | None = None
    models: list[dict[str, Any]] = Field(default_factory=list, description="model sets it holds (base, refiner, "
                                         "loras), newest first")
    jobs_done: int = 0
    model_loads: int = 0
    step_seconds_sum: float = 0.0
    step_count: int = 0
    queue_wait_seconds_sum: float = 0.0
    queue_wait_count: int = 0
    last_seen: float = 0.0


class ClaimChooser(Protocol):
    """Picks which queued job a worker takes (model-affinity routing, :mod:`foci.service.routing`)."""

    def choose(self, candidates: Sequence[Job], peers: Sequence[WorkerInfo], now: float) -> str | None:
        """The id of one of ``candidates`` (queued jobs in queue order) to claim, or None to take none now."""
        ...
