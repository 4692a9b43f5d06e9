"""Sampling-loop overhead, checkpoint load time and peak RSS on a generated checkpoint.

    .venv/bin/python benchmarks/bench_sampling.py [--size tiny|full] [--aspect 512*512] [--steps 10]

Prints ratios measured in one run (no thresholds): overhead = (loop time − Σ UNet forward time) / loop time,
where the loop time runs from the first model call to the last sampler step (text encoding and VAE decoding are
reported separately). Goal: overhead ≤ 3 %. Also logs cpu/wall so a busy machine is visible.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from foci.dev.synthetic import write_checkpoint
from foci.engine.engine import Engine, ProgressEvent
from foci.models.checkpoint import load_checkpoint
from foci.task import GenerationTask


class UnetTimer:
    """Sums wall time spent inside the UNet's forward via forward hooks."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.total = 0.0
        self.calls = 0
        self._start = 0.0
        self._handles = [unet.register_forward_pre_hook(self._before),
                         unet.register_forward_hook(self._after)]

    def _before(self, *_args) -> None:
        self._start = time.perf_counter()

    def _after(self, *_args) -> None:
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--aspect", default="512*512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="dpmpp_2m_sde_gpu")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        checkpoint = models / "checkpoints" / f"bench-{args.size}.safetensors"
        checkpoint.parent.mkdir(parents=True)
        started = time.perf_counter()
        write_checkpoint(checkpoint, size=args.size, kind="base", seed=0)
        write_time = time.perf_counter() - started
        size_mb = checkpoint.stat().st_size / 2**20

        engine = Engine(models_dir=models, output_dir=Path(tmp) / "out", precision=args.precision)
        plan = engine.plan()
        started = time.perf_counter()
        load_checkpoint(checkpoint, device=plan.device, dtype=plan.unet_dtype)
        load_time = time.perf_counter() - started

        task = GenerationTask(prompt="a cat", base_model=str(checkpoint), aspect_ratio=args.aspect,
                              steps=args.steps, image_number=1, seed=1, sampler=args.sampler, styles=[])
        engine.generate(GenerationTask(**{**task.model_dump(), "steps": 2}), save=False)  # warm-up
        unet = engine.loaded_model("base").components.unet
        timer = UnetTimer(unet)
        marks: list[float] = []

        def on_progress(_event: ProgressEvent) -> None:
            marks.append(time.perf_counter())

        loop_start = [0.0]

        def first_call(*_args) -> None:
            if not loop_start[0]:
                loop_start[0] = time.perf_counter()

        hook = unet.register_forward_pre_hook(first_call)
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        engine.generate(task, save=False, on_progress=on_progress)
        cpu_wall = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
        hook.remove()
        timer.remove()

    loop = marks[-1] - loop_start[0]
    overhead = (loop - timer.total) / loop
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"checkpoint: {args.size}, {size_mb:.0f} MiB, written in {write_time:.2f} s, loaded in {load_time:.2f} s")
    print(f"device: {plan.describe()}; cpu/wall during the run: {cpu_wall:.2f}")
    print(f"{args.steps} steps at {args.aspect}: loop {loop:.3f} s, {timer.calls} UNet calls "
          f"{timer.total:.3f} s, per step {loop / args.steps * 1000:.1f} ms")
    per_step_ms = (loop - timer.total) / args.steps * 1000
    print(f"sampling-loop overhead over raw UNet time: {overhead * 100:.2f} % (goal <= 3 %), "
          f"{per_step_ms:.1f} ms per step (guidance filter, Brownian tree, solver)")
    print(f"peak RSS: {peak_rss_mb:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
