"""The Foci service: a persistent job queue, the worker that runs it, job events, webhooks, previews and
credentials; the REST API and the web UI on top of them live in ``foci.apps``.

``foci.service.jobs`` and ``foci.service.events`` need no torch; ``foci.service.worker`` imports the engine only
when a job fails, and ``foci.service.previews`` needs torch.
"""

from __future__ import annotations

from foci.service.events import EventBus, JobEvent, Subscription
from foci.service.jobs import Job, JobError, JobImage, JobProgress, JobState, JobStore, UnknownJobError
from foci.service.worker import Worker

__all__ = ["EventBus", "Job", "JobError", "JobEvent", "JobImage", "JobProgress", "JobState", "JobStore",
           "Subscription", "UnknownJobError", "Worker"]
