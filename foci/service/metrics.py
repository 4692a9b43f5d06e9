"""Prometheus metrics in the plain-text exposition format (``GET /metrics``): jobs by state from the queue, and
per-worker counters the workers report (model loads, step time, queue wait)."""

from __future__ import annotations

from collections.abc import Sequence

from foci.service.jobs import JobState, WorkerInfo
from foci.service.queue import JobQueue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        number = int(value) if float(value).is_integer() else round(float(value), 6)
        lines.append(f"{name}{labels} {number}")


def render_metrics(store: JobQueue, workers: Sequence[WorkerInfo]) -> str:
    """The metrics text for ``store`` and ``workers``."""
    lines: list[str] = []
    _family(lines, "foci_jobs", "gauge", "Jobs in the queue and history, by state.",
            [(f'{{state="{state.value}"}}', store.count(states=[state])) for state in JobState])
    _family(lines, "foci_workers", "gauge", "Workers that reported recently.", [("", len(workers))])
    _family(lines, "foci_worker_busy", "gauge", "1 while the worker runs a job.",
            [(_worker(info), int(info.state == "busy")) for info in workers])

    def per_worker(name: str, kind: str, help_text: str, field: str) -> None:
        _family(lines, name, kind, help_text, [(_worker(info), getattr(info, field)) for info in workers])

    per_worker("foci_jobs_finished_total", "counter", "Jobs a worker finished since it started.", "jobs_done")
    per_worker("foci_model_loads_total", "counter", "Checkpoint loads (model switches) of a worker.", "model_loads")
    lines.append("# HELP foci_step_seconds Time per sampling step.")
    lines.append("# TYPE foci_step_seconds summary")
    for info in workers:
        lines.append(f"foci_step_seconds_sum{_worker(info)} {round(info.step_seconds_sum, 6)}")
        lines.append(f"foci_step_seconds_count{_worker(info)} {info.step_count}")
    lines.append("# HELP foci_queue_wait_seconds Time from submission to start, per job a worker started.")
    lines.append("# TYPE foci_queue_wait_seconds summary")
    for info in workers:
        lines.append(f"foci_queue_wait_seconds_sum{_worker(info)} {round(info.queue_wait_seconds_sum, 6)}")
        lines.append(f"foci_queue_wait_seconds_count{_worker(info)} {info.queue_wait_count}")
    return "\n".join(lines) + "\n"


def _worker(info: WorkerInfo) -> str:
    return f'{{worker="{_label(info.name)}",node="{_label(info.node)}"}}'
