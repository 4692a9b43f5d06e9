"""Several workers — one per GPU — draining the same queue; looks like one worker to the API and UI."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from foci.service.jobs import WorkerInfo
from foci.service.worker import Worker


class WorkerPool:
    """One :class:`Worker` per device over one job store. The store's atomic claim hands each job to exactly
    one worker; ``skip`` reaches whichever worker runs the job."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)

    @property
    def alive(self) -> bool:
        """True while at least one worker thread runs."""
        return any(worker.alive for worker in self.workers)

    @property
    def current_job_ids(self) -> list[str]:
        """Ids of the jobs running now, one per busy worker."""
        return [job_id for worker in self.workers if (job_id := worker.current_job_id) is not None]

    def workers_info(self) -> list[WorkerInfo]:
        """What each worker holds and does (``/v1/health``, ``/metrics``)."""
        return [worker.info() for worker in self.workers]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop every worker in parallel (their running jobs go back to the queue)."""
        with ThreadPoolExecutor(len(self.workers)) as executor:
            list(executor.map(lambda worker: worker.stop(timeout), self.workers))

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    def skip(self, job_id: str) -> bool:
        """Skip the current image of ``job_id`` on the worker running it; False if none does."""
        return any(worker.skip(job_id) for worker in self.workers)
