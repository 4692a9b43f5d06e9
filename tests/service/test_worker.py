"""The worker: real generations with events and previews, skip, cancel, shutdown, failures, a crash in the middle
of a queue (SIGKILL) with recovery, and many concurrent submissions."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from foci.engine.engine import Engine, ProgressEvent
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.service.events import EventBus, JobEvent, Subscription
from foci.service.jobs import Job, JobError, JobState, JobStore
from foci.service.worker import Worker, one_line_error
from foci.task import GenerationTask

REPO_ROOT = Path(__file__).resolve().parents[2]
FINAL = [JobState.DONE, JobState.FAILED, JobState.CANCELLED]


def make_task(checkpoint: Path | str = "tiny.safetensors", **overrides: object) -> GenerationTask:
    values: dict[str, object] = dict(prompt="a cat", base_model=str(checkpoint), aspect_ratio="64*64", steps=2,
                                     image_number=1, styles=[], loras=[], seed=5)
    values.update(overrides)
    return GenerationTask(**values)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def drain(subscription: Subscription, timeout: float) -> list[JobEvent]:
    """Events until the job's final one."""
    events: list[JobEvent] = []
    deadline = time.monotonic() + timeout
    while not events or not events[-1].final:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no final event; got {[e.kind for e in events]}"
        item = subscription.get(remaining)
        if item is not None:
            events.append(item)
    return events


class FakeEngine:
    """A fast stand-in for Engine: same callbacks and interrupt protocol, tiny PNG files, no model."""

    def __init__(self, output_dir: Path, *, steps: int = 2, step_delay: float = 0.002) -> None:
        self.output_dir = output_dir
        self.steps = steps
        self.step_delay = step_delay
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True,
                 on_download: Callable[[object], None] | None = None,
                 on_image: Callable[[object], None] | None = None) -> list[SimpleNamespace]:
        with self._lock:
            self.prompts.append(task.prompt)
        if task.prompt.startswith("explode"):
            raise RuntimeError("the fake engine exploded\non purpose")
        seeds = task.image_seeds()
        results = []
        for index, seed in enumerate(seeds):
            if interrupt is not None and interrupt() == "stop":
                break
            action = None
            for step in range(1, self.steps + 1):
                action = interrupt() if interrupt is not None else None
                if action in ("skip", "stop"):
                    break
                time.sleep(self.step_delay)
                if on_progress is not None:
                    done = index * self.steps + step
                    on_progress(ProgressEvent(index, len(seeds), step, self.steps,
                                              100.0 * done / (self.steps * len(seeds)), None))
            if action == "stop":
                break
            if action == "skip":
                continue
            path = self.output_dir / "fake" / f"{uuid.uuid4().hex}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = Image.new("RGB", (64, 64), (seed % 256, 0, 0))
            picture.save(path)
            results.append(SimpleNamespace(path=path, seed=seed, image=picture))
            if on_image is not None:
                on_image(results[-1])
        return results


class GatedEngine:
    """Wraps an engine: after the first progress event it waits until the test opens the gate."""

    def __init__(self, inner: Engine | FakeEngine) -> None:
        self.inner = inner
        self.output_dir = inner.output_dir
        self.reached = threading.Event()
        self.gate = threading.Event()

    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True,
                 on_download: Callable[[object], None] | None = None,
                 on_image: Callable[[object], None] | None = None) -> list:
        def progress(event: ProgressEvent) -> None:
            if on_progress is not None:
                on_progress(event)
            if not self.reached.is_set():
                self.reached.set()
                self.gate.wait(20)

        return self.inner.generate(task, on_progress=progress, interrupt=interrupt, save=save, on_image=on_image)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    with JobStore(tmp_path / "jobs.sqlite3") as opened:
        yield opened


# ----------------------------------------------------------------------------------------- real engine
def test_worker_runs_a_job_with_events_previews_and_webhook(engine: Engine, tiny_checkpoint: Path,
                                                            store: JobStore) -> None:
    bus = EventBus()
    delivered: list[Job] = []
    worker = Worker(store, engine, bus, poll_interval=0.05, webhook=delivered.append, preview_interval=0.0)
    job = store.submit(make_task(tiny_checkpoint, image_number=2, steps=3, seed=11))
    with bus.subscribe(job.id) as events:
        worker.start()
        try:
            received = drain(events, 60)
        finally:
            worker.stop()
    assert not worker.alive
    kinds = [event.kind for event in received]
    # each image's event comes as soon as it is saved, before the next image's steps
    assert kinds == ["started"] + ["progress"] * 3 + ["image"] + ["progress"] * 3 + ["image", "done"]
    steps = [(e.progress.image_index, e.progress.step, e.progress.total_steps) for e in received if e.progress]
    assert steps[:6] == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 3), (1, 2, 3), (1, 3, 3)]
    progress_events = [event for event in received if event.kind == "progress"]
    assert progress_events[0].progress.eta_seconds is None and progress_events[-2].progress.eta_seconds >= 0
    assert progress_events[-1].progress.percent == pytest.approx(100.0)
    preview = Image.open(io.BytesIO(base64.b64decode(progress_events[0].preview_png)))
    assert preview.format == "PNG" and preview.size == (64, 64) and preview.mode == "RGB"

    final = store.get(job.id)
    assert final.state is JobState.DONE and final.attempts == 1 and final.error is None
    assert final.progress is not None and final.progress.percent == pytest.approx(100.0)
    assert [image.seed for image in final.images] == [11, 12]
    for image in final.images:
        assert not Path(image.path).is_absolute() and "\\" not in image.path
        file = engine.output_dir / image.path
        assert file.is_file() and (image.width, image.height) == (64, 64)
        scheme, payload = read_metadata(file)
        assert task_from_metadata(payload, scheme).seed == image.seed
    assert [event.image for event in received if event.kind == "image"] == final.images
    assert [job.id for job in delivered] == [job.id] and delivered[0].state is JobState.DONE


def test_a_failing_task_fails_with_one_line(engine: Engine, store: JobStore) -> None:
    bus = EventBus()
    worker = Worker(store, engine, bus)
    broken = store.submit(make_task("missing-model.safetensors"))
    with bus.subscribe(broken.id) as events:
        ended = worker.run_once()
        received = drain(events, 5)
    assert ended.state is JobState.FAILED and "not found" in ended.error and "\n" not in ended.error
    assert received[-1].kind == "failed" and received[-1].error == ended.error
    assert worker.run_once() is None


def test_skip_abandons_the_current_image_only(engine: Engine, tiny_checkpoint: Path, store: JobStore) -> None:
    gated = GatedEngine(engine)
    bus = EventBus()
    worker = Worker(store, gated, bus, poll_interval=0.05)
    job = store.submit(make_task(tiny_checkpoint, image_number=2, steps=3, seed=20))
    assert not worker.skip(job.id)  # not running yet
    with bus.subscribe(job.id) as events:
        worker.start()
        try:
            assert gated.reached.wait(60), "the job never started sampling"
            assert worker.current_job_id == job.id
            assert worker.skip(job.id) and not worker.skip("another-job")
            gated.gate.set()
            received = drain(events, 60)
        finally:
            worker.stop()
    final = store.get(job.id)
    assert final.state is JobState.DONE and final.skipped_images == 1
    assert [image.seed for image in final.images] == [21]  # image 0 (seed 20) was abandoned after step 1
    kinds = [event.kind for event in received]
    assert kinds.count("skipped") == 1 and kinds.count("image") == 1 and kinds[-1] == "done"


# ----------------------------------------------------------------------------------------- fake engine
def test_cancelling_a_running_job_stops_it(tmp_path: Path, store: JobStore) -> None:
    gated = GatedEngine(FakeEngine(tmp_path / "out", steps=5))
    bus = EventBus()
    delivered: list[Job] = []
    worker = Worker(store, gated, bus, poll_interval=0.05, webhook=delivered.append)
    job = store.submit(make_task(image_number=3))
    after = store.submit(make_task(prompt="next"))
    with bus.subscribe(job.id) as events:
        worker.start()
        try:
            assert gated.reached.wait(10)
            assert store.cancel(job.id).state is JobState.RUNNING  # flagged; the worker ends it
            gated.gate.set()
            received = drain(events, 10)
            wait_for(lambda: store.get(after.id).state is JobState.DONE, 10, "the next job")
        finally:
            worker.stop()
    final = store.get(job.id)
    assert final.state is JobState.CANCELLED and final.images == [] and final.finished_at is not None
    assert received[-1].kind == "cancelled" and "image" not in [event.kind for event in received]
    assert [job.state for job in delivered] == [JobState.CANCELLED, JobState.DONE]


def test_stopping_the_worker_requeues_the_running_job(tmp_path: Path, store: JobStore) -> None:
    fake = FakeEngine(tmp_path / "out", steps=5)
    gated = GatedEngine(fake)
    bus = EventBus()
    worker = Worker(store, gated, bus, poll_interval=0.05)
    job = store.submit(make_task())
    with bus.subscribe(job.id) as events:
        worker.start()
        assert gated.reached.wait(10)
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        time.sleep(0.05)
        gated.gate.set()
        stopper.join(10)
        received = drain_until(events, "queued", 5)
    assert not worker.alive
    requeued = store.get(job.id)
    assert requeued.state is JobState.QUEUED and requeued.attempts == 0 and requeued.started_at is None
    assert received[-1].kind == "queued"
    assert worker.run_once() is None  # a stopped worker takes nothing
    worker.start()  # and a restarted one finishes it
    try:
        wait_for(lambda: store.get(job.id).state is JobState.DONE, 10, "the re-queued job")
    finally:
        worker.stop()
    assert store.get(job.id).attempts == 1 and fake.prompts == ["a cat", "a cat"]


def drain_until(subscription: Subscription, kind: str, timeout: float) -> list[JobEvent]:
    events: list[JobEvent] = []
    deadline = time.monotonic() + timeout
    while not events or events[-1].kind != kind:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {kind} event; got {[e.kind for e in events]}"
        item = subscription.get(remaining)
        if item is not None:
            events.append(item)
    return events


def test_engine_and_webhook_errors_never_stop_the_worker(tmp_path: Path, store: JobStore) -> None:
    def broken_webhook(job: Job) -> None:
        raise ConnectionError("receiver down")

    worker = Worker(store, FakeEngine(tmp_path / "out"), EventBus(), poll_interval=0.05, webhook=broken_webhook)
    exploding = store.submit(make_task(prompt="explode now"))
    fine = store.submit(make_task(prompt="fine"))
    worker.start()
    try:
        wait_for(lambda: store.count(states=FINAL) == 2, 10, "both jobs")
    finally:
        worker.stop()
    failed = store.get(exploding.id)
    assert failed.state is JobState.FAILED
    assert failed.error == "RuntimeError: the fake engine exploded on purpose"
    assert store.get(fine.id).state is JobState.DONE
    assert one_line_error(ValueError("x" * 2000)).endswith("…")


def test_concurrent_submissions_with_cancels_end_consistently(tmp_path: Path, store: JobStore) -> None:
    engines = [FakeEngine(tmp_path / "out", step_delay=0.001) for _ in range(2)]
    bus = EventBus()
    workers = [Worker(store, fake, bus, poll_interval=0.01, name=f"w{i}") for i, fake in enumerate(engines)]
    submitted: dict[str, str] = {}
    cancelled_ok: set[str] = set()
    cancel_refused: set[str] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(thread_index: int) -> None:
        mine: list[str] = []
        try:
            for i in range(25):
                number = thread_index * 25 + i
                job = store.submit(make_task(prompt=f"job {number}", image_number=1 + number % 2),
                                   priority=number % 3)
                mine.append(job.id)
                with lock:
                    submitted[job.id] = job.task.prompt
                if number % 10 == 0:  # 10 %: cancel one of this thread's recent jobs, in whatever state it is
                    target = mine[max(0, len(mine) - 1 - (number // 10) % 3)]
                    try:
                        store.cancel(target)
                        with lock:
                            cancelled_ok.add(target)
                    except JobError:
                        with lock:
                            cancel_refused.add(target)
                for worker in workers:
                    worker.wake()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    for worker in workers:
        worker.start()
    try:
        clients = [threading.Thread(target=client, args=(index,)) for index in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert not errors, errors
        wait_for(lambda: store.count(states=[JobState.QUEUED, JobState.RUNNING]) == 0, 60, "an empty queue")
    finally:
        for worker in workers:
            worker.stop()

    jobs = store.list(limit=1000)
    assert len(jobs) == len(submitted) == 200 and len(cancelled_ok) + len(cancel_refused) == 20
    states = {job.id: job.state for job in jobs}
    assert {job_id for job_id, state in states.items() if state is JobState.CANCELLED} == cancelled_ok
    assert all(states[job_id] is JobState.DONE for job_id in cancel_refused)
    assert all(state in (JobState.DONE, JobState.CANCELLED) for state in states.values())
    generated = [prompt for fake in engines for prompt in fake.prompts]
    assert len(generated) == len(set(generated))  # no job ran twice
    for job in jobs:
        assert job.attempts <= 1
        if job.state is JobState.DONE:
            assert submitted[job.id] in generated and len(job.images) == job.task.image_number
            assert all((tmp_path / "out" / image.path).is_file() for image in job.images)


# ----------------------------------------------------------------------------------------- crash and recovery
CHILD = """
import sys, threading
from pathlib import Path
from foci.engine.engine import Engine
from foci.service.events import EventBus
from foci.service.jobs import JobStore
from foci.service.worker import Worker

store = JobStore(Path(sys.argv[1]))
engine = Engine(models_dir=Path(sys.argv[2]), output_dir=Path(sys.argv[3]), device="cpu", precision="fp32")
Worker(store, engine, EventBus(), poll_interval=0.05).start()
print("worker started", flush=True)
threading.Event().wait(120)
"""


def test_sigkill_mid_queue_then_recovery_finishes_every_job_once(tiny_models_dir: Path, tiny_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    database, output = tmp_path / "jobs.sqlite3", tmp_path / "outputs"
    store = JobStore(database)
    jobs = [store.submit(make_task(tiny_checkpoint, prompt=f"crash job {i}", seed=100 + i,
                                   sampler="euler", guidance_scale=1.0))
            for i in range(20)]
    prompts = {job.task.prompt: job.id for job in jobs}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "FOCI_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(database), str(tiny_models_dir), str(output)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def mid_run() -> bool:
            if child.poll() is not None:
                raise AssertionError(f"the worker process ended early: {child.stderr.read().decode()[-2000:]}")
            return store.count(states=[JobState.DONE]) >= 3 and store.count(states=[JobState.RUNNING]) == 1

        wait_for(mid_run, 90, "the child worker to finish a few jobs")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    history = {job.id: job for job in store.list(states=[JobState.DONE])}
    left_running = [job.id for job in store.list(states=[JobState.RUNNING])]
    assert len(history) >= 3 and len(left_running) <= 1
    assert store.recover() == left_running
    engine = Engine(models_dir=tiny_models_dir, output_dir=output, device="cpu", precision="fp32")
    worker = Worker(store, engine, EventBus(), poll_interval=0.05)
    worker.start()
    try:
        wait_for(lambda: store.count(states=FINAL) == 20, 90, "all 20 jobs after recovery")
    finally:
        worker.stop()

    final = {job.id: job for job in store.list(limit=100)}
    assert all(job.state is JobState.DONE and len(job.images) == 1 for job in final.values())
    for job_id, before in history.items():
        assert final[job_id] == before  # finished jobs are untouched by the crash and the recovery
    assert all(final[job_id].attempts == 2 for job_id in left_running)
    assert all(job.attempts == 1 for job_id, job in final.items() if job_id not in left_running)

    recorded = {image.path: job for job in final.values() for image in job.images}
    assert len(recorded) == 20  # one distinct file per job
    orphans = []
    for file in sorted(output.rglob("*.png")):
        scheme, payload = read_metadata(file)
        task = task_from_metadata(payload, scheme)
        owner = prompts[task.prompt]
        relative = file.relative_to(output).as_posix()
        if relative in recorded:
            assert recorded[relative].id == owner and recorded[relative].images[0].seed == task.seed
        else:
            orphans.append(owner)  # saved by the killed run just before it could be recorded
    assert len(recorded) + len(orphans) == len(list(output.rglob("*.png")))
    assert all(owner in left_running for owner in orphans) and len(orphans) <= 1
    store.close()


# ------------------------------------------------------------------------------------------ downloads
def test_a_job_that_downloads_its_checkpoint_streams_download_progress(tmp_path: Path,
                                                                        tiny_checkpoint: Path) -> None:
    """Issue 16.3: while a job downloads a model file, its events carry the bytes, total, speed and ETA."""
    import hashlib

    from foci.files.download_hints import human_bytes
    from foci.files.downloads import CatalogueEntry, Downloader
    from tests.http_fixtures import Fault, FileServer

    data = tiny_checkpoint.read_bytes()
    name = "slow-base.safetensors"
    with FileServer({"/slow.safetensors": data}) as mirror:
        mirror.fail_next("/slow.safetensors", Fault(pace=0.002))
        entry = CatalogueEntry(name=name, url=mirror.url("/slow.safetensors"), folder="checkpoints", size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), licence="test")
        engine = Engine(models_dir=tmp_path / "models", output_dir=tmp_path / "out", device="cpu", precision="fp32",
                        downloader=Downloader(environ={}), catalogue={name: entry})
        store, bus = JobStore(tmp_path / "jobs.sqlite3"), EventBus()
        worker = Worker(store, engine, bus, progress_interval=0.05, previews=False)
        job = store.submit(GenerationTask(prompt="a cat", base_model=name, styles=[], loras=[], steps=2,
                                          aspect_ratio="64*64", seed=1, image_number=1))
        with bus.subscribe(job.id) as events:
            final = worker.run_once()
            received = []
            while (event := events.get_nowait()) is not None:
                received.append(event)
    assert final is not None and final.state is JobState.DONE, final
    downloads = [e.progress for e in received if e.kind == "progress" and e.progress.download is not None]
    assert len(downloads) >= 3
    assert all(p.download.file == name and p.download.total_bytes == len(data) for p in downloads)
    counts = [p.download.downloaded_bytes for p in downloads]
    assert counts == sorted(counts) and downloads[-1].download.done and counts[-1] == len(data)
    assert any(p.download.bytes_per_second and p.download.eta_seconds is not None for p in downloads)
    assert downloads[0].message == f"Downloading {name} … 0 B / {human_bytes(len(data))}"
    assert " MB / " in downloads[1].message and " MB/s, about " in downloads[1].message
    steps = [e.progress for e in received if e.kind == "progress" and e.progress.download is None]
    assert [p.step for p in steps] == [1, 2]  # sampling progress is unchanged
