"""The job store (states, order, edits, persistence, recovery, leases) on both backends (SQLite and PostgreSQL,
through the ``queue_backend`` fixture), the event bus and latent previews."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foci.service.events import EventBus, JobEvent
from foci.service.jobs import (
    MIGRATIONS,
    Job,
    JobError,
    JobImage,
    JobProgress,
    JobState,
    JobStore,
    SqlJobStore,
    UnknownJobError,
    WorkerInfo,
)
from foci.service.postgres import PostgresJobStore
from foci.service.previews import latent_preview, png_base64
from foci.service.queue import JobQueue, open_queue
from foci.task import GenerationTask
from tests.service.conftest import QueueBackend


def make_task(**overrides: object) -> GenerationTask:
    values: dict[str, object] = dict(prompt="a cat", base_model="tiny.safetensors", aspect_ratio="64*64",
                                     steps=2, image_number=1, styles=[], seed=1)
    values.update(overrides)
    return GenerationTask(**values)


@pytest.fixture
def store(queue_backend: QueueBackend) -> SqlJobStore:
    with queue_backend.open() as opened:
        yield opened


def queued_ids(store: JobStore) -> list[str]:
    return [job.id for job in store.list(states=[JobState.QUEUED])]


def progress(step: int = 1) -> JobProgress:
    return JobProgress(percent=50.0 * step, step=step, total_steps=2, image_index=0, image_count=1,
                       eta_seconds=1.5, message="working")


# ----------------------------------------------------------------------------------------- transitions
def test_submit_claim_complete(store: SqlJobStore) -> None:
    job = store.submit(make_task(prompt="hello"), webhook_url="http://127.0.0.1:9/hook")
    assert len(job.id) == 32 and int(job.id, 16) >= 0  # uuid4 hex
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.images == []
    assert job.task.prompt == "hello" and job.webhook_url == "http://127.0.0.1:9/hook"
    assert job.started_at is None and job.finished_at is None

    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is JobState.RUNNING and claimed.attempts == 1 and claimed.started_at is not None
    assert store.claim_next() is None

    image = JobImage(path="2026-01-01/a.png", seed=1, width=64, height=64)
    done = store.complete(job.id, [image], skipped_images=1)
    assert done.state is JobState.DONE and done.images == [image] and done.skipped_images == 1
    assert done.finished_at is not None and done.finished_at >= claimed.started_at
    with pytest.raises(JobError, match="done"):
        store.complete(job.id, [])
    with pytest.raises(JobError, match="done"):
        store.fail(job.id, "late")
    with pytest.raises(JobError, match="already done"):
        store.cancel(job.id)


def test_fail_keeps_a_one_line_error(store: SqlJobStore) -> None:
    job = store.submit(make_task())
    with pytest.raises(JobError, match="queued"):
        store.fail(job.id, "not running yet")
    with pytest.raises(JobError, match="queued"):
        store.complete(job.id, [])
    store.claim_next()
    failed = store.fail(job.id, "model not found\n  look in models/checkpoints")
    assert failed.state is JobState.FAILED
    assert failed.error == "model not found look in models/checkpoints"


def test_cancel_queued_and_running_jobs(store: SqlJobStore) -> None:
    queued = store.submit(make_task())
    cancelled = store.cancel(queued.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert store.cancel(queued.id).state is JobState.CANCELLED  # idempotent
    assert store.claim_next() is None  # a cancelled job never runs

    first, second = store.submit(make_task()), store.submit(make_task())
    assert store.claim_next().id == first.id
    flagged = store.cancel(first.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.cancel_requested(first.id) and not store.cancel_requested(second.id)
    image = JobImage(path="x.png", seed=1, width=64, height=64)
    ended = store.complete(first.id, [image])  # the worker stopped it: it ends cancelled, keeping its images
    assert ended.state is JobState.CANCELLED and ended.images == [image]
    assert store.complete(first.id, []).state is JobState.CANCELLED  # stays cancelled
    assert store.fail(first.id, "boom").state is JobState.CANCELLED

    assert store.claim_next().id == second.id
    store.cancel(second.id)
    assert store.fail(second.id, "interrupted").state is JobState.CANCELLED


def test_unknown_jobs_and_bad_input(store: SqlJobStore) -> None:
    with pytest.raises(UnknownJobError, match="no job"):
        store.get("nope")
    for action in (store.cancel, store.cancel_requested, store.delete, store.queue_position):
        with pytest.raises(JobError):
            action("nope")
    with pytest.raises(JobError, match="http"):
        store.submit(make_task(), webhook_url="ftp://example.com/x")
    with pytest.raises(JobError, match="integer"):
        store.submit(make_task(), priority="high")  # type: ignore[arg-type]
    with pytest.raises(JobError, match="GenerationTask"):
        store.submit({"prompt": "x"})  # type: ignore[arg-type]
    with pytest.raises(JobError, match="limit"):
        store.list(limit=-1)
    with pytest.raises(JobError, match="states are"):
        store.list(states=["sleeping"])  # type: ignore[list-item]
    assert store.count() == 0


# ----------------------------------------------------------------------------------------- order and edits
def test_fifo_with_priorities(store: SqlJobStore) -> None:
    low = store.submit(make_task(prompt="low"), priority=-1)
    first = store.submit(make_task(prompt="first"))
    urgent = store.submit(make_task(prompt="urgent"), priority=5)
    second = store.submit(make_task(prompt="second"))
    urgent2 = store.submit(make_task(prompt="urgent2"), priority=5)
    expected = [urgent.id, urgent2.id, first.id, second.id, low.id]
    assert queued_ids(store) == expected
    assert [store.queue_position(job_id) for job_id in expected] == [0, 1, 2, 3, 4]
    claimed = [store.claim_next().id for _ in range(5)]
    assert claimed == expected and store.claim_next() is None
    assert store.queue_position(first.id) is None


def test_move_and_reorder(store: SqlJobStore) -> None:
    a, b, c, d = (store.submit(make_task(prompt=name)) for name in "abcd")
    vip = store.submit(make_task(prompt="vip"), priority=3)
    store.move(d.id, to_front=True)
    moved = store.get(d.id)
    assert queued_ids(store) == [d.id, vip.id, a.id, b.id, c.id] and moved.priority == 3
    store.move(a.id, to_back=True)
    assert queued_ids(store) == [d.id, vip.id, b.id, c.id, a.id]
    store.move(c.id, before=b.id)
    assert queued_ids(store) == [d.id, vip.id, c.id, b.id, a.id]
    store.move(b.id, before=vip.id)  # takes its new neighbour's priority
    assert queued_ids(store) == [d.id, b.id, vip.id, c.id, a.id] and store.get(b.id).priority == 3
    store.move(vip.id, to_back=True)
    assert queued_ids(store) == [d.id, b.id, c.id, a.id, vip.id] and store.get(vip.id).priority == 0

    # Bisecting the same gap again and again runs out of float precision: the queue renumbers itself.
    for _ in range(120):
        store.move(c.id, before=a.id)
        store.move(a.id, before=c.id)
    assert queued_ids(store) == [d.id, b.id, a.id, c.id, vip.id]

    with pytest.raises(JobError, match="exactly one"):
        store.move(a.id)
    with pytest.raises(JobError, match="exactly one"):
        store.move(a.id, to_front=True, to_back=True)
    with pytest.raises(JobError, match="itself"):
        store.move(a.id, before=a.id)
    assert store.claim_next().id == d.id
    with pytest.raises(JobError, match="not queued"):
        store.move(a.id, before=d.id)
    with pytest.raises(JobError, match="running"):
        store.move(d.id, to_back=True)
    with pytest.raises(UnknownJobError):
        store.move(a.id, before="missing")


def test_update_task_and_priority_only_while_queued(store: SqlJobStore) -> None:
    job = store.submit(make_task(prompt="old"))
    other = store.submit(make_task(prompt="other"))
    updated = store.update_task(job.id, make_task(prompt="new", seed=9))
    assert updated.task.prompt == "new" and updated.task.seed == 9 and queued_ids(store) == [job.id, other.id]
    store.set_priority(other.id, 2)
    assert queued_ids(store) == [other.id, job.id]
    store.claim_next()
    with pytest.raises(JobError, match="cannot edit job .* it is running"):
        store.update_task(other.id, make_task(prompt="late"))
    with pytest.raises(JobError, match="running"):
        store.set_priority(other.id, 0)
    assert store.get(other.id).task.prompt == "other"


def test_list_order_filters_and_delete(store: SqlJobStore) -> None:
    jobs = [store.submit(make_task(prompt=f"job {i}")) for i in range(5)]
    time.sleep(0.01)
    store.claim_next()
    store.complete(jobs[0].id, [])
    store.claim_next()
    store.fail(jobs[1].id, "x")
    store.claim_next()  # jobs[2] runs
    listed = [job.id for job in store.list()]
    assert listed == [jobs[2].id, jobs[3].id, jobs[4].id, jobs[1].id, jobs[0].id]
    assert [job.id for job in store.list(limit=2, offset=1)] == listed[1:3]
    assert [job.id for job in store.list(states=[JobState.DONE, JobState.FAILED])] == [jobs[1].id, jobs[0].id]
    assert store.list(states=[]) == []
    assert store.count(states=[JobState.QUEUED]) == 2 and store.count() == 5
    with pytest.raises(JobError, match="cancel it first"):
        store.delete(jobs[2].id)
    store.delete(jobs[0].id)
    assert store.count() == 4
    with pytest.raises(UnknownJobError):
        store.get(jobs[0].id)


# ----------------------------------------------------------------------------------------- persistence
def test_reopened_store_has_the_same_jobs(queue_backend: QueueBackend) -> None:
    with queue_backend.open() as first:
        jobs = [first.submit(make_task(prompt=f"p{i}", seed=i), priority=i % 2, webhook_url=None)
                for i in range(4)]
        running = first.claim_next()
        first.set_progress(running.id, progress(1))
        first.move(jobs[3].id, to_back=True)
        first.cancel(jobs[2].id)
        before: list[Job] = first.list()
    with queue_backend.open() as second:
        after = second.list()
    assert [job.model_dump() for job in after] == [job.model_dump() for job in before]
    assert after[0].progress == progress(1)  # the newest progress is written when the store closes


def test_progress_is_coalesced_but_always_visible(queue_backend: QueueBackend) -> None:
    with queue_backend.open(progress_flush_interval=60.0) as store, queue_backend.open() as reader:
        job = store.submit(make_task())
        store.claim_next()
        store.set_progress(job.id, progress(1))
        store.set_progress(job.id, progress(2))
        assert store.get(job.id).progress == progress(2)  # memory copy, at once
        assert reader.get(job.id).progress == progress(1)  # the file: only the first write so far
        store.complete(job.id, [])
        assert reader.get(job.id).progress == progress(2)  # the last progress is written when the job ends
        store.set_progress(job.id, progress(1))  # ignored: the job is not running
        assert store.get(job.id).progress == progress(2)


def test_recover_requeues_running_jobs(queue_backend: QueueBackend) -> None:
    store = queue_backend.open()
    first, second, third, fourth = (store.submit(make_task(prompt=str(i))) for i in range(4))
    for _ in range(3):
        store.claim_next()
    store.cancel(second.id)  # cancel pending when the process died
    queue_backend.execute("UPDATE jobs SET attempts = 3 WHERE id = ?", (third.id,))  # crashed 3 times already
    store._conn.close()  # the process "dies": no orderly close

    reopened = queue_backend.open()
    assert reopened.recover() == [first.id]
    assert reopened.get(first.id).state is JobState.QUEUED and reopened.get(first.id).attempts == 1
    assert reopened.get(second.id).state is JobState.CANCELLED
    failed = reopened.get(third.id)
    assert failed.state is JobState.FAILED and "3 times" in failed.error
    assert queued_ids(reopened) == [first.id, fourth.id]  # back at its old place
    assert reopened.recover() == []
    again = reopened.claim_next()
    assert again.id == first.id and again.attempts == 2
    released = reopened.release(first.id)
    assert released.state is JobState.QUEUED and released.attempts == 1 and queued_ids(reopened)[0] == first.id
    reopened.close()


def test_newer_schema_is_refused(queue_backend: QueueBackend, tmp_path: Path) -> None:
    queue_backend.open().close()
    queue_backend.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(JobError, match="newer Foci"):
        queue_backend.open()
    (tmp_path / "junk.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JobError, match="cannot open"):
        JobStore(tmp_path / "junk.sqlite3")


def test_a_version_1_database_is_migrated_keeping_its_jobs(queue_backend: QueueBackend) -> None:
    """A queue written by the previous Foci (schema 1: no leases, no workers table) opens and keeps its jobs."""
    if queue_backend.name == "sqlite":
        statements = MIGRATIONS[1]
    else:
        probe = PostgresJobStore.__new__(PostgresJobStore)
        statements = tuple(probe._migration_sql(statement) for statement in MIGRATIONS[1])
    for statement in (*statements, "CREATE TABLE schema_version (version INTEGER NOT NULL)",
                      "INSERT INTO schema_version (version) VALUES (1)"):
        queue_backend.execute(statement)
    queue_backend.execute("INSERT INTO jobs (id, task, state, priority, position, created_at) VALUES "
                          "(?, ?, 'queued', 0, 1.0, 1.0)", ("a" * 32, '{"prompt": "from version 1"}'))
    with queue_backend.open() as store:
        assert store.get("a" * 32).task.prompt == "from version 1"
        claimed = store.claim_next(worker="w1", lease_seconds=30)
        assert claimed.id == "a" * 32 and claimed.worker == "w1"
    queue_backend.execute("SELECT worker, lease_until FROM jobs")
    with queue_backend.open() as again:  # already at the current version: nothing to do
        assert again.get("a" * 32).state is JobState.RUNNING


def test_claims_are_atomic_across_threads_and_stores(queue_backend: QueueBackend) -> None:
    stores = [queue_backend.open() for _ in range(3)]
    ids = {stores[0].submit(make_task(prompt=str(i))).id for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(store: JobStore) -> None:
        while (job := store.claim_next()) is not None:
            with lock:
                claimed.append(job.id)
            store.complete(job.id, [])

    threads = [threading.Thread(target=claim, args=(stores[i % 3],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(claimed) == sorted(ids)  # each job claimed exactly once
    assert stores[1].count(states=[JobState.DONE]) == 60
    for store in stores:
        store.close()


# ----------------------------------------------------------------------------------------- leases and workers
def test_an_expired_lease_requeues_the_job_exactly_once(queue_backend: QueueBackend) -> None:
    stores = [queue_backend.open() for _ in range(4)]
    job = stores[0].submit(make_task())
    held = stores[0].claim_next(worker="dead", lease_seconds=0.3)
    assert held.worker == "dead" and held.attempts == 1
    assert stores[0].heartbeat(job.id, "dead", 0.3) and stores[0].holds(job.id, "dead")
    assert not stores[0].heartbeat(job.id, "someone-else", 30)
    assert stores[1].claim_next(worker="alive", lease_seconds=30) is None  # the lease still runs
    time.sleep(0.5)

    # Four processes notice at once: the job goes back to the queue once and is claimed once.
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def reap(store: SqlJobStore) -> None:
        barrier.wait()
        results.append(store.requeue_expired())

    threads = [threading.Thread(target=reap, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=len) == [[], [], [], [job.id]]
    again = stores[1].claim_next(worker="alive", lease_seconds=30)
    assert again.id == job.id and again.attempts == 2 and again.worker == "alive"

    # The dead worker comes back: it holds nothing any more, so it cannot finish, fail or release the job.
    assert not stores[0].heartbeat(job.id, "dead", 30) and not stores[0].holds(job.id, "dead")
    for action in (lambda: stores[0].complete(job.id, [], worker="dead"),
                   lambda: stores[0].fail(job.id, "late", worker="dead"),
                   lambda: stores[0].release(job.id, worker="dead")):
        with pytest.raises(JobError, match="no longer holds it"):
            action()
    image = JobImage(path="x.png", seed=1, width=64, height=64)
    done = stores[1].complete(job.id, [image], worker="alive")
    assert done.state is JobState.DONE and done.images == [image] and stores[2].count() == 1
    for store in stores:
        store.close()


def test_a_claim_reaps_expired_leases_and_gives_up_after_max_attempts(store: SqlJobStore) -> None:
    job = store.submit(make_task())
    for attempt in (1, 2):
        claimed = store.claim_next(worker=f"w{attempt}", lease_seconds=0.05)
        assert claimed.id == job.id and claimed.attempts == attempt
        time.sleep(0.1)
    assert store.claim_next(worker="w3", lease_seconds=0.05, max_attempts=2) is None  # reaped, not re-run
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED and "2 times" in failed.error

    cancelled = store.submit(make_task())
    store.claim_next(worker="w", lease_seconds=0.05)
    store.cancel(cancelled.id)
    time.sleep(0.1)
    assert store.requeue_expired() == [] and store.get(cancelled.id).state is JobState.CANCELLED

    unleased = store.submit(make_task())
    store.claim_next(worker="embedded")  # no lease: only recover() or include_unleased re-queue it
    assert store.requeue_expired() == [] and store.get(unleased.id).state is JobState.RUNNING
    assert store.requeue_expired(include_unleased=True) == [unleased.id]


class PickSecond:
    def __init__(self) -> None:
        self.seen: list[tuple[list[str], list[str]]] = []

    def choose(self, candidates, peers, now):  # the ClaimChooser protocol
        self.seen.append(([job.task.prompt for job in candidates], [peer.name for peer in peers]))
        return candidates[1].id if len(candidates) > 1 else None


def test_a_chooser_picks_among_queued_jobs_and_sees_live_workers(store: SqlJobStore) -> None:
    jobs = [store.submit(make_task(prompt=f"p{index}")) for index in range(3)]
    store.report_worker(WorkerInfo(id="w1-x", name="w1", models=[{"base": "a.safetensors"}]))
    store.report_worker(WorkerInfo(id="w2-y", name="w2", state="busy", current_job=jobs[0].id))
    chooser = PickSecond()
    assert store.claim_next(worker="w1-x", chooser=chooser).id == jobs[1].id
    assert chooser.seen == [(["p0", "p1", "p2"], ["w1", "w2"])]
    assert store.claim_next(chooser=chooser).id == jobs[2].id
    assert store.claim_next(chooser=chooser) is None  # one candidate left: this chooser takes none
    assert store.get(jobs[0].id).state is JobState.QUEUED

    listed = store.workers()
    assert [(w.id, w.state, w.models) for w in listed] == [("w1-x", "idle", [{"base": "a.safetensors"}]),
                                                          ("w2-y", "busy", [])]
    assert all(abs(w.last_seen - time.time()) < 30 for w in listed)
    store.report_worker(WorkerInfo(id="w1-x", name="w1", state="busy", jobs_done=3))
    assert store.workers()[0].jobs_done == 3 and len(store.workers()) == 2  # updated, not duplicated
    store.remove_worker("w2-y")
    assert [w.id for w in store.workers()] == ["w1-x"]
    assert store.workers(max_age=-1) == []  # heard from too long ago


def test_an_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    from foci.dev.postgres_server import _free_port

    url = f"postgresql://foci:secret@127.0.0.1:{_free_port()}/jobs"
    with pytest.raises(JobError) as caught:
        open_queue(url)
    message = str(caught.value)
    assert message.startswith("cannot reach the job database postgresql://foci:***@127.0.0.1:")
    assert "secret" not in message and "\n" not in message
    with pytest.raises(ValueError, match="postgresql:// URL or a SQLite file"):
        open_queue("mysql://localhost/jobs")
    assert isinstance(open_queue(tmp_path / "q.sqlite3"), JobQueue)


# ----------------------------------------------------------------------------------------- events
def event(job_id: str, kind: str = "progress", step: int = 1) -> JobEvent:
    return JobEvent(job_id=job_id, kind=kind, state=JobState.RUNNING,
                    progress=progress(step) if kind == "progress" else None)


def test_event_bus_fans_out_and_filters() -> None:
    bus = EventBus()
    everything, only_a = bus.subscribe(), bus.subscribe("a")
    assert bus.subscriber_count == 2
    bus.publish(event("a", "started"))
    bus.publish(event("b", "started"))
    assert [everything.get(0.1).job_id for _ in range(2)] == ["a", "b"]
    assert only_a.get(0.1).job_id == "a" and only_a.get(0.05) is None
    assert everything.get_nowait() is None

    received: list[JobEvent] = []
    reader = threading.Thread(target=lambda: received.append(only_a.get(5)))
    reader.start()
    time.sleep(0.05)
    bus.publish(event("a", "done"))
    reader.join(5)
    assert received and received[0].kind == "done" and received[0].final

    only_a.close()
    assert only_a.closed and only_a.get(0.01) is None and bus.subscriber_count == 1
    assert everything.get(0.1).kind == "done"
    bus.publish(event("a", "started"))  # nobody left for it but `everything`
    assert everything.get(0.1).kind == "started"
    with everything:
        pass
    assert bus.subscriber_count == 0


def test_lagging_consumer_loses_old_progress_first() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=5)
    bus.publish(event("a", "started"))
    for step in range(1, 21):
        bus.publish(event("a", "progress", step))
    bus.publish(event("a", "image"))
    bus.publish(event("a", "done"))
    kinds = []
    while (item := slow.get_nowait()) is not None:
        kinds.append((item.kind, item.progress.step if item.progress else None))
    assert kinds == [("started", None), ("progress", 19), ("progress", 20), ("image", None), ("done", None)]
    assert slow.dropped == 18
    # With nothing but important events queued, the oldest goes (and is counted).
    for kind in ("started", "image", "image", "image", "image", "done"):
        bus.publish(event("a", kind))
    assert [slow.get_nowait().kind for _ in range(5)] == ["image"] * 4 + ["done"]
    assert slow.dropped == 19
    with pytest.raises(ValueError, match="at least one"):
        bus.subscribe(maxsize=0)


def test_async_iteration_receives_events_from_other_threads() -> None:
    bus = EventBus()

    async def consume() -> list[str]:
        subscription = bus.subscribe("job")
        threading.Timer(0.05, lambda: [bus.publish(event("job", kind)) for kind in ("started", "done")]).start()
        kinds = []
        async for item in subscription.aiter(timeout=5):
            kinds.append(item.kind)
            if item.final:
                subscription.close()
        assert await subscription.aget(timeout=0.01) is None
        return kinds

    assert asyncio.run(asyncio.wait_for(consume(), 10)) == ["started", "done"]

    async def timeout() -> JobEvent | None:
        with bus.subscribe() as subscription:
            return await subscription.aget(timeout=0.05)

    assert asyncio.run(timeout()) is None


def test_event_for_job_carries_state_and_error(store: SqlJobStore) -> None:
    job = store.submit(make_task())
    store.claim_next()
    failed = store.fail(job.id, "it broke")
    made = JobEvent.for_job(failed, "failed")
    assert made.state is JobState.FAILED and made.error == "it broke" and made.final
    assert JobEvent.model_validate_json(made.model_dump_json()) == made
    assert JobEvent.for_job(failed, "progress").error is None


# ----------------------------------------------------------------------------------------- previews
def test_latent_preview_shape_and_dtype() -> None:
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    picture = latent_preview(latent)
    array = np.asarray(picture)
    assert picture.mode == "RGB" and array.dtype == np.uint8 and array.shape == (64, 96, 3)
    assert array.std() > 0

    big = latent_preview(torch.zeros(4, 128, 96, dtype=torch.bfloat16), max_size=256)
    assert big.size == (192, 256)  # longer side capped
    zeros = np.asarray(big)
    assert np.abs(zeros.astype(int) - zeros[0, 0].astype(int)).max() == 0  # a flat latent → a flat colour
    assert tuple(zeros[0, 0]) == (141, 125, 127)  # the bias alone, mapped from −1…1 to 0…255

    decoded = Image.open(io.BytesIO(base64.b64decode(png_base64(picture))))
    assert decoded.format == "PNG" and decoded.size == picture.size
    with pytest.raises(ValueError, match="SDXL latent"):
        latent_preview(torch.zeros(1, 16, 8, 8))
    with pytest.raises(TypeError):
        latent_preview(np.zeros((4, 8, 8)))  # type: ignore[arg-type]


def test_performance_steps_survive_the_queue(queue_backend: QueueBackend) -> None:
    from foci.settings.performance import apply_performance

    store = queue_backend.open()
    job = store.submit(GenerationTask(prompt="a cat", performance="Lightning"))
    restored = store.get(job.id).task
    assert apply_performance(restored)[0].effective_steps == 4  # not the record's default 30
    explicit = store.submit(GenerationTask(prompt="a cat", performance="Lightning", steps=9))
    assert apply_performance(store.get(explicit.id).task)[0].effective_steps == 9
    store.close()
