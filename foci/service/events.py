"""Job events and the in-process bus that fans them out to the API's event streams and the web UI.

    bus = EventBus()
    with bus.subscribe(job_id) as events:          # or bus.subscribe() for every job
        event = events.get(timeout=1.0)            # a JobEvent, or None after the timeout / once closed
    async for event in bus.subscribe(job_id).aiter():   # the same from asyncio code
        ...

Publishing never blocks: each subscription has a bounded buffer, and when a consumer lags its oldest *progress*
events are dropped first (the newest progress supersedes them); other events are dropped only when a buffer holds
nothing else, and every drop is counted in :attr:`Subscription.dropped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, Field

from foci.service.jobs import Job, JobImage, JobProgress, JobState

EventKind = Literal["queued", "started", "progress", "image", "done", "failed", "cancelled", "skipped"]
FINAL_EVENT_KINDS: frozenset[str] = frozenset({"done", "failed", "cancelled"})
DEFAULT_BUFFER = 256


class JobEvent(BaseModel):
    """Something that happened to a job. ``preview_png`` (base64 PNG of the live preview) only on progress."""

    job_id: str
    kind: EventKind
    state: JobState
    progress: JobProgress | None = None
    image: JobImage | None = None
    preview_png: str | None = None
    error: str | None = None
    time: float = Field(default_factory=time.time)

    @classmethod
    def for_job(cls, job: Job, kind: EventKind, **fields: object) -> JobEvent:
        """An event about ``job`` carrying its current state (and error for failed jobs)."""
        values: dict[str, object] = {"job_id": job.id, "kind": kind, "state": job.state}
        if job.error is not None and kind in FINAL_EVENT_KINDS:
            values["error"] = job.error
        values.update(fields)
        return cls.model_validate(values)

    @property
    def final(self) -> bool:
        """True for the job's last event (done, failed or cancelled)."""
        return self.kind in FINAL_EVENT_KINDS


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    """Wake asyncio consumers from any thread."""
    for loop, ready in waiters:
        with contextlib.suppress(RuntimeError):  # that consumer's loop has closed
            loop.call_soon_threadsafe(ready.set)


class Subscription:
    """One consumer's buffer of events (for one job or all jobs). Close it when done (or use ``with``)."""

    def __init__(self, bus: EventBus, job_id: str | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"a subscription buffer needs room for at least one event, got {maxsize}")
        self.job_id = job_id
        self.maxsize = maxsize
        self.dropped = 0
        self._bus = bus
        self._items: deque[JobEvent] = deque()
        self._condition = threading.Condition()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def wants(self, event: JobEvent) -> bool:
        """Whether this subscription receives ``event``."""
        return self.job_id is None or self.job_id == event.job_id

    def _push(self, event: JobEvent) -> None:
        with self._condition:
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._drop_one()
            self._items.append(event)
            self._condition.notify_all()
            waiters = list(self._waiters)
        _wake_all(waiters)

    def _drop_one(self) -> None:
        """Make room: the oldest progress event if there is one, else the oldest event."""
        for index, queued in enumerate(self._items):
            if queued.kind == "progress":
                del self._items[index]
                break
        else:
            self._items.popleft()
        self.dropped += 1

    def get(self, timeout: float | None = None) -> JobEvent | None:
        """The next event; waits up to ``timeout`` seconds (forever with None). None on timeout or once closed
        and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining)
            return self._items.popleft()

    def get_nowait(self) -> JobEvent | None:
        """The next event if one is buffered, else None."""
        with self._condition:
            return self._items.popleft() if self._items else None

    async def aget(self, timeout: float | None = None) -> JobEvent | None:
        """:meth:`get` for asyncio code: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            ready = asyncio.Event()
            with self._condition:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return None
                waiter = (loop, ready)
                self._waiters.add(waiter)
            try:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(ready.wait(), remaining)
                except asyncio.TimeoutError:
                    return None
            finally:
                with self._condition:
                    self._waiters.discard(waiter)

    async def aiter(self, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """``async for event in subscription.aiter()``: events until the subscription closes (or no event came
        for ``timeout`` seconds)."""
        while True:
            event = await self.aget(timeout)
            if event is None:
                return
            yield event

    def close(self) -> None:
        """Stop receiving; buffered events can still be read, then :meth:`get` returns None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            waiters = list(self._waiters)
        _wake_all(waiters)
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EventBus:
    """Thread-safe fan-out of :class:`JobEvent`\\ s to any number of subscriptions."""

    def __init__(self, *, buffer_size: int = DEFAULT_BUFFER) -> None:
        self.buffer_size = buffer_size
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []

    def publish(self, event: JobEvent) -> None:
        """Deliver ``event`` to every subscription that wants it; never blocks on a slow consumer."""
        with self._lock:
            targets = [sub for sub in self._subscriptions if sub.wants(event)]
        for subscription in targets:
            subscription._push(event)

    def subscribe(self, job_id: str | None = None, *, maxsize: int | None = None) -> Subscription:
        """Events of one job (or of every job with None) from now on."""
        subscription = Subscription(self, job_id, self.buffer_size if maxsize is None else maxsize)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._lock:
            return len(self._subscriptions)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
