"""Several workers (one per device) share one queue: every job runs exactly once, all workers take jobs, skip
reaches the worker that runs the job."""

from __future__ import annotations

import time
from pathlib import Path

from foci.service.events import EventBus
from foci.service.jobs import JobState, JobStore
from foci.service.pool import WorkerPool
from foci.service.worker import Worker
from foci.task import GenerationTask
from tests.service.test_worker import FakeEngine


def test_pool_drains_one_queue_with_every_worker(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    bus = EventBus()
    engines = [FakeEngine(tmp_path / "out", steps=3, step_delay=0.02) for _ in range(2)]
    pool = WorkerPool([Worker(store, engine, bus, poll_interval=0.02, previews=False, name=f"w{index}")
                       for index, engine in enumerate(engines)])
    jobs = [store.submit(GenerationTask(prompt=f"job {index}", image_number=1, styles=[])) for index in range(12)]
    pool.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and store.count(states=[JobState.QUEUED, JobState.RUNNING]):
            time.sleep(0.05)
        assert pool.alive
    finally:
        pool.stop()
    assert [store.get(job.id).state for job in jobs] == [JobState.DONE] * 12
    ran = [prompt for engine in engines for prompt in engine.prompts]
    assert sorted(ran) == sorted(f"job {index}" for index in range(12))  # each exactly once
    assert all(engine.prompts for engine in engines)  # both devices worked
    assert not pool.alive and pool.current_job_ids == []
    store.close()


def test_skip_reaches_the_worker_running_the_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    bus = EventBus()
    slow = FakeEngine(tmp_path / "out", steps=40, step_delay=0.02)
    pool = WorkerPool([Worker(store, FakeEngine(tmp_path / "out"), bus, previews=False, name="idle"),
                       Worker(store, slow, bus, previews=False, name="busy")])
    job = store.submit(GenerationTask(prompt="two images", image_number=2, styles=[]))
    pool.workers[1].start()  # only the second worker runs, so it holds the job
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and store.get(job.id).state is not JobState.RUNNING:
            time.sleep(0.01)
        time.sleep(0.1)
        assert pool.current_job_ids == [job.id]
        assert pool.skip(job.id)
        assert not pool.skip("no-such-job")
        while time.monotonic() < deadline and not store.get(job.id).state.final:
            time.sleep(0.02)
    finally:
        pool.stop()
    finished = store.get(job.id)
    assert finished.state is JobState.DONE and len(finished.images) == 1 and finished.skipped_images == 1
    store.close()
