"""The worker: one thread per device that takes jobs from the store and runs them on its own engine.

    store, bus = JobStore(path), EventBus()
    store.recover()                                   # once, before any worker starts
    worker = Worker(store, Engine(...), bus, webhook=post_webhooks)
    worker.start()
    ...
    worker.stop()                                     # a job still running goes back to the queue

With ``lease_seconds`` (workers on other processes or machines, e.g. Ray actors) each claim is a lease the worker
renews from a heartbeat thread, which also reports the worker (state, models held, counters) to the store; a job
whose lease was lost (this worker was presumed dead and the job re-queued) is abandoned, never completed twice.
With ``affinity_wait`` the worker picks jobs by model affinity (:mod:`foci.service.routing`), letting a job
wait at most that many seconds for a worker that holds its models.

For each job it publishes ``started``, then ``progress`` (while a model file downloads: its bytes, speed and ETA
in ``progress.download``, at most every ``progress_interval`` seconds; then every step, with an ETA and, at most
every ``preview_interval`` seconds, a base64 PNG preview), ``skipped`` when an image is abandoned, one ``image`` per
finished image (as soon as it is saved, from an engine that reports it through ``on_image``; else at the end) and
finally ``done``, ``failed`` or ``cancelled``. The webhook callable, if any, gets the final job.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from foci.service.events import EventBus, EventKind, JobEvent
from foci.service.jobs import DownloadStatus, Job, JobError, JobImage, JobProgress, UnknownJobError, WorkerInfo
from foci.service.routing import AffinityRouter

if TYPE_CHECKING:
    from foci.engine.engine import ProgressEvent
    from foci.files.downloads import DownloadProgress
    from foci.service.previews import PreviewRenderer
    from foci.service.queue import JobQueue
    from foci.task import GenerationTask

_log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 500


class EngineLike(Protocol):
    """What the worker needs of :class:`foci.engine.engine.Engine` (tests pass lighter stand-ins)."""

    output_dir: Path

    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True,
                 on_download: Callable[[DownloadProgress], None] | None = None,
                 on_image: Callable[[Any], None] | None = None) -> list[Any]: ...


@dataclass
class _Run:
    """What the worker tracks while one job runs (shared by the engine callbacks and :meth:`Worker.skip`)."""

    job: Job
    expect_image_start: bool = True  # the engine's next interrupt() call is its per-image "stop?" check
    skip_pending: bool = False
    skip_image: int = 0
    skipped: int = 0
    image_index: int = -1
    step: int = 0
    total_steps: int = 0
    rate_origin: tuple[float, int] | None = None
    stored_at: float = -math.inf
    stored_image: int = -1
    preview_at: float = -math.inf
    cancelled: bool = False
    shutdown: bool = False
    lost: bool = False  # the lease ran out: another worker may run the job now
    published: set[str] = field(default_factory=set)  # paths of the images already sent as ``image`` events
    step_at: float | None = None
    download_at: float = -math.inf


def one_line_error(error: BaseException) -> str:
    """An exception as one short line: the message of errors meant for users, else ``Type: message``."""
    from foci.engine.engine import GenerationError  # the engine module is heavy; only needed once something failed

    message = " ".join(str(error).split())
    if not isinstance(error, GenerationError | JobError):
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    message = message or "unknown error"
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


class Worker:
    """Runs queued jobs one at a time on ``engine`` in a background thread (see the module docstring).

    Several workers (one per device, each with its own engine) may share one store: claiming is atomic.
    """

    def __init__(self, store: JobQueue, engine: EngineLike, bus: EventBus, *, poll_interval: float = 0.2,
                 webhook: Callable[[Job], None] | None = None, previews: bool = True,
                 progress_interval: float = 0.2, preview_interval: float = 0.5, preview_size: int = 256,
                 name: str = "foci-worker", lease_seconds: float | None = None,
                 affinity_wait: float | None = None, node: str | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if lease_seconds is not None and lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.store = store
        self.engine = engine
        self.bus = bus
        self.poll_interval = poll_interval
        self.webhook = webhook
        self.previews = previews
        self.progress_interval = progress_interval
        self.preview_interval = preview_interval
        self.preview_size = preview_size
        self.name = name
        self.worker_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.node = node if node is not None else socket.gethostname()
        # what this worker holds; with affinity_wait it also picks the jobs (else: the queue's first)
        self._held = AffinityRouter(self.worker_id, max_wait=affinity_wait or 0.0)
        self.router = self._held if affinity_wait is not None else None
        self._stats = WorkerInfo(id=self.worker_id, name=name, node=self.node)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat: threading.Thread | None = None
        self._run: _Run | None = None
        self._preview_failed = False
        self._renderer: PreviewRenderer | None = None  # built at the first preview (imports torch)

    # ----------------------------------------------------------------------------------------- control
    @property
    def current_job_id(self) -> str | None:
        """The id of the job running now, or None."""
        with self._lock:
            return self._run.job.id if self._run is not None else None

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def info(self) -> WorkerInfo:
        """What this worker holds and does now, with its counters since it started."""
        with self._lock:
            run = self._run
            state = "stopped" if not self.alive else "busy" if run is not None else "idle"
            return self._stats.model_copy(update={"state": state, "current_job": run.job.id if run else None,
                                                  "models": [dict(models) for models in self._held.held]})

    def start(self) -> None:
        """Start the worker thread (does nothing if it already runs)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            if self.lease_seconds is not None:
                self._beat = threading.Thread(target=self._heartbeat_loop, name=f"{self.name}-heartbeat",
                                              daemon=True)
                self._beat.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread: a running job is interrupted at its next step and goes back to the queue."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("worker %s did not stop within %.1f s (a model may still be loading)", self.name,
                             timeout)
        beat = self._beat
        if beat is not None and beat is not threading.current_thread():
            beat.join(timeout)
            try:
                self.store.remove_worker(self.worker_id)
            except Exception:  # noqa: BLE001 - the database may be gone already
                _log.warning("worker %s could not sign off", self.name, exc_info=True)

    def wake(self) -> None:
        """Look for a queued job now instead of at the next poll (call after submitting)."""
        self._wake.set()

    def skip(self, job_id: str) -> bool:
        """Abandon the image being made for ``job_id`` and go on with its next one. False when that job is not
        running on this worker."""
        with self._lock:
            run = self._run
            if run is None or run.job.id != job_id:
                return False
            run.skip_pending = True
            finished_image = run.total_steps > 0 and run.step >= run.total_steps
            run.skip_image = max(run.image_index, 0) + (1 if finished_image else 0)
            return True

    # ----------------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                job = self.run_once()
            except Exception:  # a store failure must not end the worker
                _log.exception("worker %s: could not run the next job", self.name)
                job = None
            if job is None:
                self._wake.wait(self.poll_interval)

    def _heartbeat_loop(self) -> None:
        """Renew the running job's lease and report this worker, every third of the lease."""
        interval = self.lease_seconds / 3
        while not self._stopping.wait(0 if self._stats.last_seen == 0 else interval):
            self._stats.last_seen = time.time()
            self._heartbeat()

    def _heartbeat(self) -> None:
        with self._lock:
            run = self._run
        try:
            if run is not None and not run.lost and not self.store.heartbeat(run.job.id, self.worker_id,
                                                                             self.lease_seconds):
                _log.warning("worker %s lost job %s (its lease ran out); abandoning it", self.name, run.job.id)
                run.lost = True
            self.store.report_worker(self.info())
        except Exception:  # noqa: BLE001 - a database hiccup: the next beat tries again
            _log.warning("worker %s: heartbeat failed", self.name, exc_info=True)

    def run_once(self) -> Job | None:
        """Claim the next queued job and run it in this thread; returns the job as it ended (None if none was
        queued). The worker thread calls this in a loop; tests and scripts may call it directly."""
        if self._stopping.is_set():
            return None
        job = self.store.claim_next(worker=self.worker_id, lease_seconds=self.lease_seconds, chooser=self.router)
        if job is None:
            return None
        loads = self._held.hold(job.task)
        with self._lock:
            self._stats.model_loads += int(loads)
            if job.started_at is not None:
                self._stats.queue_wait_seconds_sum += max(job.started_at - job.created_at, 0.0)
                self._stats.queue_wait_count += 1
        if self.lease_seconds is not None:
            self._heartbeat_soon(job)
        return self._run_job(job)

    def _heartbeat_soon(self, job: Job) -> None:
        """Tell the other workers at once which models this one now holds (routing reads it)."""
        try:
            info = self.info().model_copy(update={"state": "busy", "current_job": job.id})
            self.store.report_worker(info)
        except Exception:  # noqa: BLE001
            _log.warning("worker %s could not report its claim", self.name, exc_info=True)

    @property
    def _owner(self) -> str | None:
        """The worker id the store checks on completion (leased claims only)."""
        return self.worker_id if self.lease_seconds is not None else None

    def _run_job(self, job: Job) -> Job:
        run = _Run(job)
        with self._lock:
            self._run = run
        try:
            self._publish(JobEvent.for_job(job, "started"))
            try:
                results = self.engine.generate(job.task, on_progress=partial(self._on_progress, run),
                                               interrupt=partial(self._interrupt, run), save=True,
                                               on_download=partial(self._on_download, run),
                                               on_image=partial(self._on_image, run))
            except Exception as error:  # noqa: BLE001 - any failure of a task ends that job, never the worker
                if run.lost:
                    return self._abandon(job)
                if run.shutdown and not run.cancelled:
                    return self._release(job)
                _log.warning("job %s failed: %s", job.id, error, exc_info=_log.isEnabledFor(logging.DEBUG))
                message = one_line_error(error)
                final = self._end(job, lambda: self.store.fail(job.id, message, worker=self._owner))
            else:
                if run.lost:
                    return self._abandon(job)
                if run.shutdown and not run.cancelled:
                    return self._release(job)
                images = [self._job_image(result) for result in results]
                final = self._end(job, lambda: self.store.complete(job.id, images, skipped_images=run.skipped,
                                                                   worker=self._owner))
                if final is None:
                    return self._abandon(job)
                for image in images:  # those an engine did not report as they finished
                    if image.path not in run.published:
                        self._publish(JobEvent.for_job(job, "image", image=image))
            if final is None:
                return self._abandon(job)
            with self._lock:
                self._stats.jobs_done += 1
            kind: EventKind = final.state.value  # type: ignore[assignment]  # done, failed or cancelled
            self._publish(JobEvent.for_job(final, kind, progress=final.progress))
            self._notify(final)
            return final
        finally:
            with self._lock:
                self._run = None

    def _end(self, job: Job, finish: Callable[[], Job]) -> Job | None:
        """Record the job's end; None when this worker's lease was taken away meanwhile (nothing recorded)."""
        try:
            return finish()
        except JobError:
            if self._owner is not None and not self.store.holds(job.id, self.worker_id):
                return None
            raise

    def _abandon(self, job: Job) -> Job:
        """The lease was lost: another worker runs (or will run) the job; this run leaves no trace."""
        _log.warning("worker %s abandoned job %s: its lease ran out", self.name, job.id)
        return self.store.get(job.id)

    def _release(self, job: Job) -> Job:
        released = self.store.release(job.id, worker=self._owner)
        kind: EventKind = "queued" if released.state.value == "queued" else "cancelled"
        self._publish(JobEvent.for_job(released, kind))
        if kind == "cancelled":
            self._notify(released)
        return released

    def _notify(self, job: Job) -> None:
        if self.webhook is None:
            return
        try:
            self.webhook(job)
        except Exception:  # noqa: BLE001 - a webhook must never stop the worker
            _log.exception("webhook for job %s failed", job.id)

    def _publish(self, event: JobEvent) -> None:
        try:
            self.bus.publish(event)
        except Exception:  # noqa: BLE001
            _log.exception("publishing a %s event for job %s failed", event.kind, event.job_id)

    def _job_image(self, result: Any) -> JobImage:
        path = Path(result.path)
        try:
            relative = path.resolve().relative_to(Path(self.engine.output_dir).resolve()).as_posix()
        except ValueError:
            relative = path.resolve().as_posix()
        width, height = result.image.size
        return JobImage(path=relative, seed=int(result.seed), width=int(width), height=int(height))

    # ----------------------------------------------------------------------------------------- engine callbacks
    def _interrupt(self, run: _Run) -> str | None:
        """The engine asks before every image and every step: "stop" for a shutdown or a cancel, "skip" once
        per :meth:`skip` — only at a step, because the per-image check ignores anything but "stop"."""
        if self._stopping.is_set():
            run.shutdown = True
            return "stop"
        if run.lost:
            return "stop"
        try:
            cancelled = self.store.cancel_requested(run.job.id)
        except UnknownJobError:
            cancelled = True
        except Exception:  # noqa: BLE001 - a busy database must not kill the job
            _log.warning("could not check job %s for a cancel", run.job.id, exc_info=True)
            cancelled = False
        if cancelled:
            run.cancelled = True
            return "stop"
        with self._lock:
            if run.expect_image_start:
                run.expect_image_start = False
                return None
            if not run.skip_pending:
                return None
            run.skip_pending = False
            run.expect_image_start = True
            run.skipped += 1
        self._publish(JobEvent.for_job(run.job, "skipped"))
        return "skip"

    def _on_progress(self, run: _Run, event: ProgressEvent) -> None:
        try:
            self._report_progress(run, event)
        except Exception:  # noqa: BLE001 - a reporting problem must not fail the image
            _log.warning("progress report for job %s failed", run.job.id, exc_info=True)

    def _report_progress(self, run: _Run, event: ProgressEvent) -> None:
        now = time.monotonic()
        new_image = event.image_index != run.image_index
        with self._lock:
            if not new_image and event.step > run.step and run.step_at is not None:
                self._stats.step_seconds_sum += (now - run.step_at) / (event.step - run.step)
                self._stats.step_count += 1
            run.step_at = now
            run.image_index, run.step, run.total_steps = event.image_index, event.step, event.total_steps
            if event.step >= event.total_steps:
                run.expect_image_start = True  # the next interrupt() is the check before the next image
            if run.skip_pending and event.image_index > run.skip_image:
                run.skip_pending = False  # the image it was meant for is over
        done = event.image_index * event.total_steps + event.step
        overall = max(event.image_count * event.total_steps, 1)
        eta = None
        if run.rate_origin is None:
            run.rate_origin = (now, done)
        elif done > run.rate_origin[1]:
            per_step = (now - run.rate_origin[0]) / (done - run.rate_origin[1])
            eta = round(max(overall - done, 0) * per_step, 2)
        progress = JobProgress(
            percent=round(float(event.percent), 2), step=event.step, total_steps=event.total_steps,
            image_index=event.image_index, image_count=event.image_count, eta_seconds=eta,
            message=f"Image {event.image_index + 1} of {event.image_count}: step {event.step}/{event.total_steps}")
        if new_image or event.step >= event.total_steps or now - run.stored_at >= self.progress_interval:
            run.stored_at = now
            self.store.set_progress(run.job.id, progress)
        preview = None
        if (self.previews and event.denoised is not None and not self._preview_failed
                and now - run.preview_at >= self.preview_interval):
            run.preview_at = now
            preview = self._preview(event)
        self._publish(JobEvent.for_job(run.job, "progress", progress=progress, preview_png=preview))

    def _on_image(self, run: _Run, result: Any) -> None:
        """An image is done (saved): its ``image`` event now, so a viewer shows it while the next one samples."""
        if run.cancelled or run.shutdown or run.lost:
            return
        try:
            image = self._job_image(result)
        except Exception:  # noqa: BLE001 - a reporting problem must not fail the job; it is reported at the end
            _log.warning("image event for job %s failed", run.job.id, exc_info=True)
            return
        run.published.add(image.path)
        self._publish(JobEvent.for_job(run.job, "image", image=image))

    def _on_download(self, run: _Run, event: DownloadProgress) -> None:
        """A model file the job needs is downloading: a ``progress`` event with ``download`` set (throttled)."""
        now = time.monotonic()
        if not event.done and now - run.download_at < self.progress_interval:
            return
        run.download_at = now
        try:
            status = DownloadStatus(file=event.name, downloaded_bytes=event.downloaded, total_bytes=event.total,
                                    bytes_per_second=event.bytes_per_second, eta_seconds=event.eta_seconds,
                                    done=event.done)
            progress = JobProgress(percent=0.0, step=0, total_steps=0, image_index=0,
                                   image_count=run.job.task.image_number, message=status.describe(),
                                   download=status)
            self.store.set_progress(run.job.id, progress)
            self._publish(JobEvent.for_job(run.job, "progress", progress=progress))
        except Exception:  # noqa: BLE001 - a reporting problem must not fail the download
            _log.warning("download progress for job %s failed", run.job.id, exc_info=True)

    def _preview(self, event: ProgressEvent) -> str | None:
        try:
            from foci.service.previews import PreviewRenderer, png_base64

            if self._renderer is None:  # the VAE approximation when the engine's model folders hold it, else linear
                self._renderer = PreviewRenderer(getattr(self.engine, "folders", None), max_size=self.preview_size)
            return png_base64(self._renderer(event.denoised))
        except Exception:  # noqa: BLE001 - e.g. a latent with other channels; previews just stop
            _log.warning("live previews disabled: the latent could not be previewed", exc_info=True)
            self._preview_failed = True
            return None
