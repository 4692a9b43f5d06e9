"""Model-affinity routing: which queued job an idle worker takes.

Loading a checkpoint costs seconds to minutes, so a job should run on a worker that already holds its models.
Each idle worker, when it claims, looks at the first queued jobs (in queue order) and takes

1. the first job that has waited longer than ``max_wait`` seconds — no job is ever starved;
2. else the first job whose model set (base, refiner, LoRAs) it holds;
3. else the first job whose base model (and refiner) it holds — LoRAs switch without reloading the checkpoint;
4. else the first job whose models no other live worker holds;
5. else the first job not kept for another worker: each other worker keeps the first queued job for the models
   it holds (the one it takes next) — the rest go to whoever is idle, the least-loaded worker;
6. else nothing for now: the jobs kept for busy workers wait for them, at most ``max_wait`` seconds (rule 1).

So two fresh workers on a queue alternating two models settle on one model each, and a queue of one model keeps
every worker busy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from foci.service.jobs import Job, WorkerInfo
from foci.task import GenerationTask

DEFAULT_MAX_WAIT_S = 30.0
MAX_HELD_SETS = 4  # model sets a worker reports as held (its engine caches a few; newest first)


def model_set(task: GenerationTask) -> dict[str, Any]:
    """The models a task needs, as a plain record: ``{"base", "refiner", "loras": [[name, weight], …]}``."""
    refiner = task.refiner_model if task.refiner_model not in (None, "", "None") else ""
    loras = sorted([lora.name, float(lora.weight)] for lora in task.loras
                   if lora.enabled and lora.name not in ("", "None"))
    return {"base": task.base_model, "refiner": refiner, "loras": loras}


def _checkpoints(models: dict[str, Any]) -> tuple[str, str]:
    return str(models.get("base", "")), str(models.get("refiner", ""))


@dataclass
class AffinityRouter:
    """A worker's :class:`foci.service.jobs.ClaimChooser`: remembers the model sets this worker holds (newest
    first) and picks jobs by the rules of the module docstring."""

    worker_id: str
    max_wait: float = DEFAULT_MAX_WAIT_S
    held: list[dict[str, Any]] = field(default_factory=list)
    clock: Any = time.time

    def hold(self, task: GenerationTask) -> bool:
        """Note that this worker now holds ``task``'s models; True when that meant loading a checkpoint."""
        models = model_set(task)
        loads = _checkpoints(models) not in {_checkpoints(held) for held in self.held}
        self.held = [models] + [held for held in self.held if held != models]
        del self.held[MAX_HELD_SETS:]
        return loads

    def choose(self, candidates: Sequence[Job], peers: Sequence[WorkerInfo], now: float) -> str | None:
        """The job this worker should take now (see the module docstring), or None."""
        if not candidates:
            return None
        overdue = next((job for job in candidates if now - job.created_at >= self.max_wait), None)
        if overdue is not None:
            return overdue.id
        wanted = [model_set(job.task) for job in candidates]
        for index, models in enumerate(wanted):
            if models in self.held:
                return candidates[index].id
        mine = {_checkpoints(held) for held in self.held}
        for index, models in enumerate(wanted):
            if _checkpoints(models) in mine:
                return candidates[index].id
        others = [{_checkpoints(held) for held in peer.models} for peer in peers
                  if peer.id != self.worker_id and peer.state != "stopped"]
        theirs = set().union(*others)
        for index, models in enumerate(wanted):
            if _checkpoints(models) not in theirs:
                return candidates[index].id
        kept: set[int] = set()
        for held in others:
            kept.update(next(([index] for index, models in enumerate(wanted)
                              if index not in kept and _checkpoints(models) in held), []))
        return next((job.id for index, job in enumerate(candidates) if index not in kept), None)
