"""Queue throughput with N Ray workers on tiny fake engines: jobs/s for N = 1 and 2, and the ratio.

    python benchmarks/bench_scale.py [--jobs 200] [--step-delay 0.02] [--queue postgresql://…|FILE.sqlite3]

Each worker is a Ray actor on a local cluster (``ray.init(num_cpus=2)``) running a fake engine (``--steps`` steps
of ``--step-delay`` seconds, one tiny PNG per job, no model loads), so the figure is the scale-out machinery's
own: claims, leases, events, image records. Without ``--queue`` a throwaway PostgreSQL server is started (Debian's
``postgresql`` package); pass a SQLite path to measure that backend instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from foci.dev.fake_engine import FakeEngineFactory
from foci.service.events import EventBus
from foci.service.jobs import JobState
from foci.service.queue import open_queue
from foci.service.ray_pool import RayWorkerPool
from foci.task import GenerationTask


def measure(queue: str, workers: int, jobs: int, factory: FakeEngineFactory) -> float:
    """jobs/s for ``jobs`` jobs over ``workers`` workers: all are queued first, then the workers start; the time is
    from the first job's start to the last job's end (as the queue recorded them), so start-up is not counted."""
    store = open_queue(queue)
    for index in range(jobs):
        store.submit(GenerationTask(prompt=f"job {index}", base_model="tiny.safetensors", image_number=1,
                                    styles=[], seed=index))
    pool = RayWorkerPool.launch(queue=queue, engine_factory=factory, bus=EventBus(), store=store,
                                cpu_workers=workers, previews=False, poll_interval=0.02)
    try:
        while store.count(states=[JobState.DONE]) < jobs:
            time.sleep(0.05)
        history = store.list(states=[JobState.DONE], limit=jobs)
    finally:
        pool.stop()
        store.close()
    first = min(job.started_at for job in history)
    last = max(job.finished_at for job in history)
    return jobs / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--step-delay", type=float, default=0.05)
    parser.add_argument("--queue", default=None, help="postgresql://… or a SQLite file (default: throwaway PG)")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", str(Path.cwd()))}})
    folder = Path(tempfile.mkdtemp(prefix="foci-bench-"))
    pg_folder = Path(tempfile.mkdtemp(prefix="foci-bench-pg-"))
    server = None
    try:
        factory = FakeEngineFactory(folder / "outputs", steps=args.steps, step_delay=args.step_delay)
        rates = {}
        for workers in (1, 2):
            if args.queue is None:
                if server is None:
                    from foci.dev.postgres_server import LocalPostgres

                    server = LocalPostgres.start(pg_folder)  # its own folder: the server runs as "postgres"
                queue = server.create_database()
            elif "://" in args.queue:
                queue = args.queue
            else:
                queue = str(folder / f"jobs-{workers}.sqlite3")
            rates[workers] = measure(queue, workers, args.jobs, factory)
            print(f"N={workers}: {rates[workers]:.1f} jobs/s ({args.jobs} jobs)", flush=True)
        ideal = 1.0 / (args.steps * args.step_delay)
        print(f"ratio N=2/N=1: {rates[2] / rates[1]:.2f}   (ideal per worker: {ideal:.1f} jobs/s)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
