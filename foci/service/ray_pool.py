"""Workers on a Ray cluster (``foci serve --ray ADDRESS|auto``): one Ray actor per GPU — or per CPU worker slot on a
cluster without GPUs — each running a :class:`foci.service.worker.Worker` with its own engine and its own
connection to the shared queue. The API process only admits jobs and streams their events.

    pool = RayWorkerPool.launch(queue="postgresql://…", engine_factory=make_engine, bus=bus, address="auto")
    ...
    pool.stop()

Workers claim with leases (a killed actor's job is re-queued and re-run once by another worker) and by model
affinity (:mod:`foci.service.routing`). Each actor buffers its job events; one pump thread per actor in the API
process long-polls them into the API's :class:`~foci.service.events.EventBus`, so progress, previews and images
reach the event streams and the UI as with local workers. Images are written by the actors into the engine's
output folder, which must therefore be shared by every node and the API (same path everywhere).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from foci.service.events import EventBus, JobEvent
from foci.service.jobs import Job, WorkerInfo
from foci.service.routing import DEFAULT_MAX_WAIT_S

_log = logging.getLogger(__name__)
DEFAULT_LEASE_S = 30.0
_EVENT_BATCH = 256
_POLL_S = 1.0


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached or has no room for a worker."""


class WorkerActor:
    """The body of one Ray actor: a worker over its own queue connection and engine (built inside the actor)."""

    def __init__(self, queue: str, engine_factory: Callable[[], Any], name: str, *, lease_seconds: float,
                 affinity_wait: float, poll_interval: float, previews: bool) -> None:
        from foci.service.queue import open_queue
        from foci.service.worker import Worker

        self.store = open_queue(queue)
        self.bus = EventBus()
        self.events = self.bus.subscribe(maxsize=4096)
        self.worker = Worker(self.store, engine_factory(), self.bus, poll_interval=poll_interval, previews=previews,
                             name=name, lease_seconds=lease_seconds, affinity_wait=affinity_wait, node=_node_ip())
        self.worker.start()

    def next_events(self, timeout: float) -> list[str]:
        """The events since the last call (JSON), waiting up to ``timeout`` seconds for the first."""
        first = self.events.get(timeout)
        if first is None:
            return []
        batch = [first.model_dump_json()]
        while len(batch) < _EVENT_BATCH and (event := self.events.get_nowait()) is not None:
            batch.append(event.model_dump_json())
        return batch

    def info(self) -> str:
        return self.worker.info().model_dump_json()

    def skip(self, job_id: str) -> bool:
        return self.worker.skip(job_id)

    def wake(self) -> None:
        self.worker.wake()

    def stop(self, timeout: float) -> None:
        """Stop the worker (its running job goes back to the queue) and close the queue connection."""
        self.worker.stop(timeout)
        self.events.close()
        self.store.close()


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label
        return ""


def connect_ray(address: str, **init_options: Any) -> Any:
    """``ray.init`` on ``address`` (``auto``: the cluster this machine belongs to); one clear RayUnavailable
    line when Ray is missing or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'foci[scale]' (or 'ray')") from None
    if ray.is_initialized():
        return ray
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, **init_options)
    except Exception as error:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError…
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {first}") from None
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT that does not answer (Ray itself would retry for minutes)."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as error:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {error}") from None


def worker_slots(cluster: dict[str, float], *, cpu_workers: int | None, cpus_per_worker: float) -> tuple[int, dict]:
    """How many actors to start and the resources each asks for: one per GPU, else ``cpu_workers`` (default:
    one per ``cpus_per_worker`` CPUs of the cluster)."""
    gpus = int(cluster.get("GPU", 0))
    if gpus and cpu_workers is None:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    count = cpu_workers if cpu_workers is not None else max(int(cluster.get("CPU", 1) // cpus_per_worker), 1)
    return count, {"num_cpus": cpus_per_worker}


@dataclass
class _Member:
    name: str
    actor: Any
    worker_id: str | None = None
    alive: bool = True
    pump: threading.Thread | None = None


@dataclass
class RayWorkerPool:
    """The API's view of the Ray workers: looks like one local worker to the API and the UI."""

    ray: Any
    bus: EventBus
    store: Any
    members: list[_Member]
    webhook: Callable[[Job], None] | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def launch(cls, *, queue: str, engine_factory: Callable[[], Any], bus: EventBus, store: Any,
              address: str = "auto", cpu_workers: int | None = None, cpus_per_worker: float = 1.0,
              lease_seconds: float = DEFAULT_LEASE_S, affinity_wait: float = DEFAULT_MAX_WAIT_S,
              poll_interval: float = 0.2, previews: bool = True, webhook: Callable[[Job], None] | None = None,
              ready_timeout: float = 300.0, init_options: dict[str, Any] | None = None) -> RayWorkerPool:
        """Connect to the cluster, start the actors (spread over the nodes) and wait until each is ready."""
        ray = connect_ray(address, **(init_options or {}))
        count, resources = worker_slots(ray.cluster_resources(), cpu_workers=cpu_workers,
                                        cpus_per_worker=cpus_per_worker)
        remote = ray.remote(max_concurrency=4, max_restarts=0, **resources)(WorkerActor)
        members = []
        for index in range(count):
            name = f"foci-ray-{index}"
            actor = remote.options(name=None, scheduling_strategy="SPREAD").remote(
                queue, engine_factory, name, lease_seconds=lease_seconds, affinity_wait=affinity_wait,
                poll_interval=poll_interval, previews=previews)
            members.append(_Member(name, actor))
        pool = cls(ray, bus, store, members, webhook)
        try:
            infos = ray.get([member.actor.info.remote() for member in members], timeout=ready_timeout)
        except Exception as error:  # noqa: BLE001 - e.g. the engine or the queue failed inside the actor
            pool.stop()
            first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise RayUnavailable(f"the Ray workers did not start: {first}") from None
        for member, info in zip(members, infos, strict=True):
            member.worker_id = WorkerInfo.model_validate_json(info).id
            member.pump = threading.Thread(target=pool._pump, args=(member,), name=f"{member.name}-events",
                                           daemon=True)
            member.pump.start()
        return pool

    # ----------------------------------------------------------------------------------------- the worker API
    @property
    def alive(self) -> bool:
        """True while at least one actor answers."""
        return any(member.alive for member in self.members)

    @property
    def current_job_ids(self) -> list[str]:
        return [info.current_job for info in self.workers_info() if info.current_job]

    def start(self) -> None:
        """The actors run from :meth:`launch` on (kept for the local pool's interface)."""

    def wake(self) -> None:
        for member in self._live():
            member.actor.wake.remote()

    def skip(self, job_id: str) -> bool:
        """Skip the current image of ``job_id`` on whichever actor runs it."""
        answers = []
        for member in self._live():
            try:
                answers.append(self.ray.get(member.actor.skip.remote(job_id), timeout=10))
            except Exception:  # noqa: BLE001 - a dead actor runs nothing
                continue
        return any(answers)

    def workers_info(self) -> list[WorkerInfo]:
        """This pool's live workers, as they last reported themselves to the queue."""
        live = {member.worker_id for member in self._live()}
        return [info for info in self.store.workers() if info.id in live]

    def stop(self, timeout: float = 10) -> None:
        """Stop every actor (their running jobs go back to the queue) and the event pumps."""
        self._stopping.set()
        stops = [member.actor.stop.remote(timeout) for member in self._live()]
        try:
            self.ray.get(stops, timeout=timeout + 5)
        except Exception:  # noqa: BLE001 - an actor that is gone has nothing to stop
            _log.warning("some Ray workers did not stop cleanly", exc_info=True)
        for member in self.members:
            self.ray.kill(member.actor, no_restart=True)
            member.alive = False
        for member in self.members:
            if member.pump is not None:
                member.pump.join(timeout)

    def kill(self, index: int) -> None:
        """Kill one actor at once, as a crash would (for tests and drills): its job's lease runs out and
        another worker re-runs it."""
        member = self.members[index]
        self.ray.kill(member.actor, no_restart=True)

    def _live(self) -> Sequence[_Member]:
        return [member for member in self.members if member.alive]

    # ----------------------------------------------------------------------------------------- events
    def _pump(self, member: _Member) -> None:
        """Long-poll one actor's events into the API's bus until it stops or dies."""
        while not self._stopping.is_set():
            try:
                batch = self.ray.get(member.actor.next_events.remote(_POLL_S), timeout=_POLL_S + 30)
            except Exception as error:  # noqa: BLE001 - RayActorError & co: the actor is gone
                if not self._stopping.is_set():
                    _log.warning("Ray worker %s is gone (%s); its job will be re-run by another worker",
                                 member.name, type(error).__name__)
                member.alive = False
                self._forget(member)
                return
            for raw in batch:
                self._deliver(JobEvent.model_validate_json(raw))

    def _forget(self, member: _Member) -> None:
        """A dead actor's report goes at once, so routing stops keeping its models' jobs for it."""
        try:
            if member.worker_id is not None:
                self.store.remove_worker(member.worker_id)
        except Exception:  # noqa: BLE001 - the report also ages out by itself
            _log.warning("could not remove the report of %s", member.name, exc_info=True)

    def _deliver(self, event: JobEvent) -> None:
        try:
            self.bus.publish(event)
            if event.final and self.webhook is not None:
                self.webhook(self.store.get(event.job_id))
        except Exception:  # noqa: BLE001 - one bad event must not stop the stream
            _log.exception("delivering a %s event of job %s failed", event.kind, event.job_id)
