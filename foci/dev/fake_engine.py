"""A stand-in for the engine in scale tests and benchmarks: the worker's callbacks and interrupt protocol, tiny PNG
files, and one "loaded" model whose switches cost ``load_delay`` seconds and are logged — no torch, no weights.

``FakeEngineFactory`` is picklable, so Ray actors build their own engine from it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from foci.files.input_images import InputImageStore
from foci.task import GenerationTask


@dataclass
class FakeProgress:
    """The fields of :class:`foci.engine.engine.ProgressEvent` the worker reads (without importing torch)."""

    image_index: int
    image_count: int
    step: int
    total_steps: int
    percent: float
    denoised: None = None


@dataclass
class FakeEngine:
    """Makes ``task.image_number`` 64×64 PNGs of ``steps`` steps each (``step_delay`` seconds per step). Holds one
    model set (base, refiner, LoRAs); a task that needs another one "loads" it: ``load_delay`` seconds and a line
    ``<pid> <base>`` appended to ``load_log`` (when set), so a test can count loads across processes."""

    output_dir: Path
    steps: int = 2
    step_delay: float = 0.002
    load_delay: float = 0.0
    load_log: Path | None = None
    held: tuple | None = None
    loads: int = 0

    @property
    def inputs(self) -> InputImageStore:
        """Input images and masks by hash, where the engine keeps them (``output_dir/inputs``)."""
        return InputImageStore(Path(self.output_dir) / "inputs")

    def generate(self, task: GenerationTask, *, on_progress: Callable[[Any], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True,
                 on_download: Callable[[Any], None] | None = None,
                 on_image: Callable[[Any], None] | None = None) -> list[SimpleNamespace]:
        self._hold(task)
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
                    on_progress(FakeProgress(index, len(seeds), step, self.steps,
                                             100.0 * done / (self.steps * len(seeds))))
            if action == "stop":
                break
            if action == "skip":
                continue
            results.append(self._save(seed))
            if on_image is not None:
                on_image(results[-1])
        return results

    def _hold(self, task: GenerationTask) -> None:
        wanted = (task.base_model, task.refiner_model, tuple((lora.name, lora.weight) for lora in task.loras))
        if wanted == self.held:
            return
        time.sleep(self.load_delay)
        self.held = wanted
        self.loads += 1
        if self.load_log is not None:
            with open(self.load_log, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {task.base_model}\n")

    def _save(self, seed: int) -> SimpleNamespace:
        path = Path(self.output_dir) / "fake" / f"{uuid.uuid4().hex}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.new("RGB", (64, 64), (seed % 256, 0, 0))
        picture.save(path)
        return SimpleNamespace(path=path, seed=seed, image=picture)


@dataclass(frozen=True)
class FakeEngineFactory:
    """Builds a :class:`FakeEngine` (picklable: what a Ray actor receives)."""

    output_dir: Path
    steps: int = 2
    step_delay: float = 0.002
    load_delay: float = 0.0
    load_log: Path | None = None

    def __call__(self) -> FakeEngine:
        return FakeEngine(Path(self.output_dir), steps=self.steps, step_delay=self.step_delay,
                          load_delay=self.load_delay, load_log=self.load_log)
