"""Scale-out: model-affinity routing, workers on a local Ray cluster over a PostgreSQL queue (200 jobs, cancels, a
killed worker), health and Prometheus metrics. Ray and PostgreSQL are started by the tests; the tests that need
them skip with the reason when they cannot start."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foci.dev.fake_engine import FakeEngine, FakeEngineFactory
from foci.service.events import EventBus
from foci.service.jobs import Job, JobError, JobState, WorkerInfo
from foci.service.pool import WorkerPool
from foci.service.routing import AffinityRouter, model_set
from foci.service.worker import Worker
from foci.task import GenerationTask
from tests.service.conftest import QueueBackend

REPO_ROOT = Path(__file__).resolve().parents[2]
FINAL = [JobState.DONE, JobState.FAILED, JobState.CANCELLED]


def task_for(model: str, index: int = 0, **overrides: Any) -> GenerationTask:
    values: dict[str, Any] = dict(prompt=f"job {index}", base_model=model, image_number=1, styles=[], loras=[],
                                  seed=index)
    values.update(overrides)
    return GenerationTask(**values)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def loads_per_process(log: Path) -> Counter:
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


# ----------------------------------------------------------------------------------------- routing (pure)
def queued(job_id: str, model: str, created_at: float = 100.0, **overrides: Any) -> Job:
    return Job(id=job_id, task=task_for(model, **overrides), state=JobState.QUEUED, created_at=created_at)


def peer(worker_id: str, *models: str, state: str = "busy") -> WorkerInfo:
    return WorkerInfo(id=worker_id, name=worker_id, state=state, models=[model_set(task_for(m)) for m in models])


def test_routing_prefers_held_models_then_unheld_ones_and_never_starves() -> None:
    router = AffinityRouter("me", max_wait=10.0)
    jobs = [queued("a1", "A.safetensors"), queued("b1", "B.safetensors"), queued("c1", "C.safetensors")]
    others = [peer("other", "A.safetensors")]
    assert router.choose(jobs, others, now=101) == "b1"  # A is held by a peer; B by nobody: take it
    assert router.hold(jobs[1].task) is True and router.hold(jobs[1].task) is False  # one load, then held
    assert router.choose(jobs, others, now=101) == "b1"
    assert router.choose([jobs[0], jobs[2]], others, now=101) == "c1"
    # Same checkpoint, other LoRAs: preferred over unheld models (LoRAs switch without reloading).
    lora_job = queued("b2", "B.safetensors", loras=[{"name": "x.safetensors", "weight": 0.5}])
    assert router.choose([jobs[2], lora_job], others, now=101) == "b2"
    # A busy peer keeps the first job for its model; the next one goes to this idle worker.
    assert router.choose([jobs[0], queued("a2", "A.safetensors")], others, now=101) == "a2"
    # Only the job kept for a busy peer: wait for it — but no longer than max_wait.
    assert router.choose([jobs[0]], others, now=105) is None
    assert router.choose([jobs[0]], others, now=110.5) == "a1"
    assert router.choose([jobs[0]], [peer("other", "A.safetensors", state="stopped")], now=101) == "a1"
    assert router.choose([], others, now=101) is None
    assert model_set(task_for("A", loras=[{"name": "l", "weight": 1, "enabled": False}],
                              refiner_model="None")) == {"base": "A", "refiner": "", "loras": []}


def claims_in_turn(backend: QueueBackend, tmp_path: Path, affinity_wait: float | None) -> list[int]:
    """Two workers taking turns on 24 jobs queued A A B B A A B B …; returns each engine's model loads."""
    store = backend.open()
    engines = [FakeEngine(tmp_path / "out") for _ in range(2)]
    workers = [Worker(store, engine, EventBus(), previews=False, name=f"w{index}", lease_seconds=30,
                      affinity_wait=affinity_wait) for index, engine in enumerate(engines)]
    def report(worker: Worker) -> None:  # their threads are not started: this test drives them turn by turn
        store.report_worker(worker.info().model_copy(update={"state": "idle"}))

    for worker in workers:
        report(worker)
    jobs = [store.submit(task_for("A.safetensors" if index % 4 < 2 else "B.safetensors", index))
            for index in range(24)]
    for turn in range(24):
        worker = workers[turn % 2]
        assert worker.run_once() is not None
        report(worker)
    assert [store.get(job.id).state for job in jobs] == [JobState.DONE] * 24
    for worker in workers:
        store.remove_worker(worker.worker_id)
    store.close()
    return [engine.loads for engine in engines]


def test_affinity_routing_saves_model_loads(queue_backend: QueueBackend, tmp_path: Path) -> None:
    assert claims_in_turn(queue_backend, tmp_path, affinity_wait=None) == [12, 12]  # queue order: a switch a job
    assert claims_in_turn(queue_backend, tmp_path, affinity_wait=30.0) == [1, 1]


def test_affinity_with_threaded_workers(queue_backend: QueueBackend, tmp_path: Path) -> None:
    """24 jobs alternating two models over two worker threads whose model switches cost 50 ms."""
    store = queue_backend.open()
    engines = [FakeEngine(tmp_path / "out", load_delay=0.05) for _ in range(2)]
    pool = WorkerPool([Worker(store, engine, EventBus(), poll_interval=0.02, previews=False, name=f"w{index}",
                              lease_seconds=5, affinity_wait=30.0) for index, engine in enumerate(engines)])
    jobs = [store.submit(task_for("A.safetensors" if index % 2 else "B.safetensors", index)) for index in range(24)]
    pool.start()
    try:
        wait_for(lambda: store.count(states=FINAL) == len(jobs), 60, "the jobs to end")
    finally:
        pool.stop()
    assert [store.get(job.id).state for job in jobs] == [JobState.DONE] * 24
    store.close()
    assert max(engine.loads for engine in engines) <= 2, [engine.loads for engine in engines]


# ----------------------------------------------------------------------------------------- health and metrics
def test_health_and_metrics_report_queue_and_workers(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from foci.apps.api import create_app
    from foci.service.auth import AuthConfig
    from foci.service.jobs import JobStore
    from foci.settings.config import FociSettings

    store = JobStore(tmp_path / "jobs.sqlite3")
    bus = EventBus()
    worker = Worker(store, FakeEngine(tmp_path / "out", steps=3), bus, poll_interval=0.02, previews=False,
                    name="w0", lease_seconds=5)
    pool = WorkerPool([worker])
    engine = SimpleEngine(tmp_path)
    app = create_app(store=store, worker=pool, bus=bus, engine=engine, settings=FociSettings(),
                     auth=AuthConfig.load(None, listen_host="127.0.0.1"), output_dir=tmp_path / "out", root=tmp_path)
    done = [store.submit(task_for("A.safetensors", index)) for index in range(3)]
    pool.start()
    try:
        wait_for(lambda: store.count(states=[JobState.DONE]) == 3, 30, "three jobs")
        store.submit(task_for("B.safetensors", 9), priority=-1)
        pool.stop()
        client = TestClient(app)
        health = client.get("/v1/health").json()
        metrics = client.get("/metrics")
    finally:
        pool.stop()
        store.close()
    assert health["queued"] == 1 and health["queue_depth"] == 1 and health["running"] == 0
    (reported,) = health["workers"]
    assert reported["name"] == "w0" and reported["jobs_done"] == 3 and reported["model_loads"] == 1
    assert reported["models"] == [{"base": "A.safetensors", "refiner": "", "loras": []}]
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'foci_jobs{state="done"} 3' in text and 'foci_jobs{state="queued"} 1' in text
    assert 'foci_jobs{state="cancelled"} 0' in text
    labels = r'\{worker="w0",node="[^"]*"\}'
    assert re.search(rf"foci_model_loads_total{labels} 1\n", text)
    assert re.search(rf"foci_step_seconds_count{labels} 6\n", text)  # 3 jobs × (3 steps − the first)
    assert re.search(rf"foci_queue_wait_seconds_count{labels} 3\n", text)
    assert re.search(rf"foci_jobs_finished_total{labels} 3\n", text)
    assert re.search(r'foci_workers 1\b', text) and "# TYPE foci_jobs gauge" in text
    assert len(done) == 3


class SimpleEngine:
    """What the API reads of an engine for health/metrics: folders, output dir, styles."""

    def __init__(self, root: Path) -> None:
        from foci.files.folders import ModelFolders

        self.output_dir = root / "out"
        self.folders = ModelFolders.default(root / "models")
        self.styles_dirs = ()
        self.wildcards_dirs = ()


# ----------------------------------------------------------------------------------------- Ray + PostgreSQL
def test_ray_unreachable_is_one_clear_error() -> None:
    pytest.importorskip("ray", reason="Ray is not installed")
    from foci.dev.postgres_server import _free_port
    from foci.service.ray_pool import RayUnavailable, connect_ray

    if __import__("ray").is_initialized():
        pytest.skip("Ray is already connected in this process")
    with pytest.raises(RayUnavailable, match=r"^cannot reach the Ray cluster at 127\.0\.0\.1:\d+: .*refused"):
        connect_ray(f"127.0.0.1:{_free_port()}")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster of 2 CPUs for this module."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'foci[scale]')")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}})
    except Exception as error:  # noqa: BLE001 - whatever keeps Ray from starting here
        pytest.skip(f"a local Ray cluster could not be started: {error}")
    yield ray
    ray.shutdown()


def test_200_jobs_over_two_ray_workers_with_cancels_and_a_killed_worker(
        ray_cluster: Any, postgres_server: Any, tmp_path: Path) -> None:
    from foci.service.queue import open_queue
    from foci.service.ray_pool import RayWorkerPool

    url = postgres_server.create_database()
    store = open_queue(url)
    bus = EventBus()
    events = bus.subscribe(maxsize=100_000)
    out = tmp_path / "shared-outputs"
    webhooks: list[str] = []
    pool = RayWorkerPool.launch(queue=url, engine_factory=FakeEngineFactory(out, steps=2, step_delay=0.01),
                                bus=bus, store=store, cpu_workers=2, lease_seconds=1.5, affinity_wait=0.5,
                                poll_interval=0.05, previews=False, webhook=lambda job: webhooks.append(job.id))
    try:
        assert len(pool.members) == 2 and pool.alive
        cancelled: set[str] = set()
        for index in range(200):  # every tenth is cancelled at once (while queued or, rarely, running)
            # every twentieth job is long (25 images of 2 steps), so the killed worker is caught mid-job
            job = store.submit(task_for("A.safetensors" if index % 3 else "B.safetensors", index,
                                        image_number=25 if index % 20 == 7 else 1))
            if index % 10 == 5:
                with contextlib.suppress(JobError):  # it may have finished already
                    store.cancel(job.id)
                    cancelled.add(job.id)
        assert len(cancelled) >= 18
        wait_for(lambda: store.count(states=[JobState.DONE]) >= 40, 60, "40 jobs done")
        victim, victim_job = busy_member(pool, store, long_only=True)
        pool.kill(victim)
        wait_for(lambda: store.count(states=FINAL) == 200, 120, "every job to end")
        survivors = pool.workers_info()
    finally:
        pool.stop()
    history = store.list(limit=1000)
    store.close()

    assert len(history) == 200 and len({job.id for job in history}) == 200
    by_id = {job.id: job for job in history}
    assert {job_id for job_id, job in by_id.items() if job.state is JobState.CANCELLED} == cancelled
    done = [job for job in history if job.id not in cancelled]
    assert all(job.state is JobState.DONE for job in done)
    assert all(len(job.images) == job.task.image_number and (out / job.images[0].path).is_file() for job in done)
    assert len({job.images[0].path for job in done}) == len(done)  # each job's own images, never a second run's
    rerun = by_id[victim_job]
    assert rerun.state is JobState.DONE and rerun.attempts == 2 and rerun.worker != pool.members[victim].worker_id
    assert all(job.attempts == 1 for job in done if job.id != victim_job)

    finals = Counter()
    while (event := events.get_nowait()) is not None:
        if event.final:
            finals[event.job_id] += 1
    assert all(finals[job.id] == 1 for job in done), "each job's end reaches the API's event bus exactly once"
    assert Counter(webhooks) == finals  # the API fires each job's webhook once, from the streamed end
    assert [info.name for info in survivors] == [pool.members[1 - victim].name]  # the dead one is not listed


def busy_member(pool: Any, store: Any, *, long_only: bool = False) -> tuple[int, str]:
    """The index of an actor that is running a job now (with ``long_only``, a job of several images), and that
    job's id."""
    found: list[tuple[int, str]] = []

    def look() -> bool:
        running = {job.worker: job.id for job in store.list(states=[JobState.RUNNING])
                   if not long_only or job.task.image_number > 1}
        found[:] = [(index, running[member.worker_id]) for index, member in enumerate(pool.members)
                    if member.worker_id in running]
        return bool(found)

    wait_for(look, 30, "a busy worker")
    return found[0]


def test_ray_workers_serve_alternating_models_with_at_most_two_loads_each(
        ray_cluster: Any, postgres_server: Any, tmp_path: Path) -> None:
    from foci.service.queue import open_queue
    from foci.service.ray_pool import RayWorkerPool

    url = postgres_server.create_database()
    store = open_queue(url)
    log = tmp_path / "loads.log"
    factory = FakeEngineFactory(tmp_path / "out", steps=2, step_delay=0.01, load_delay=0.2, load_log=log)
    jobs = [store.submit(task_for("A.safetensors" if index % 2 else "B.safetensors", index)) for index in range(40)]
    pool = RayWorkerPool.launch(queue=url, engine_factory=factory, bus=EventBus(), store=store, cpu_workers=2,
                                lease_seconds=10, affinity_wait=30, poll_interval=0.05, previews=False)
    try:
        wait_for(lambda: store.count(states=[JobState.DONE]) == len(jobs), 60, "every job done")
        infos = pool.workers_info()
    finally:
        pool.stop()
        store.close()
    loads = loads_per_process(log)
    assert len(loads) == 2 and max(loads.values()) <= 2, loads
    assert sorted(info.model_loads for info in infos) == sorted(loads.values())
    assert {models["base"] for info in infos for models in info.models} == {"A.safetensors", "B.safetensors"}
