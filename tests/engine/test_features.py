"""Features plug into the recipe's steps: a probe feature given to an Engine takes part in every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from foci.engine.denoiser import DenoiseStage, GuidanceCorrection
from foci.engine.engine import Engine
from foci.engine.features import FEATURES, Feature, FreeUFeature, SagFeature
from foci.engine.recipe import FirstLatent, ImageJob, Schedule
from foci.models.unet_patch import Undo, UnetPatch, add_pre_hook
from foci.records.outputs import read_metadata
from foci.sampling.samplers import Denoiser, StepInfo
from foci.task import GenerationTask


class _CountingPatch(UnetPatch):
    """Counts UNet calls while attached."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__(unet)
        self.calls = 0

    def _install(self) -> list[Undo]:
        def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self.calls += 1

        return [add_pre_hook(self.unet, count)]


def _probe(log: list, *, invert: bool = False) -> type[Feature]:
    """A feature whose hooks change nothing (unless ``invert``) and log what they see into ``log``."""

    class Probe(Feature):
        def __init__(self, job: ImageJob) -> None:
            self.patch = _CountingPatch(job.run.base.components.unet)
            log.append(("patch", self.patch))

        @classmethod
        def wanted(cls, task: GenerationTask) -> bool:
            return task.prompt.startswith("probe")

        @classmethod
        def prepare(cls, job: ImageJob, engine: Engine) -> Feature:
            log.append(("prepare", job.index, job.seed))
            return cls(job)

        def schedule(self, job: ImageJob, schedule: Schedule) -> Schedule:
            log.append(("schedule", schedule.total_steps))
            return schedule

        def first_latent(self, job: ImageJob, schedule: Schedule, first: FirstLatent) -> FirstLatent:
            log.append(("first_latent", tuple(first.latent.shape)))
            return first

        def unet_patches(self, job: ImageJob) -> Sequence[UnetPatch]:
            return (self.patch,)

        def guidance_corrections(self, job: ImageJob) -> Sequence[GuidanceCorrection]:
            return (self,)

        def correct(self, stage: DenoiseStage, *, x: torch.Tensor, sigma: torch.Tensor, x0_uncond: torch.Tensor,
                    x0_guided: torch.Tensor, evaluate_uncond: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            log.append(("correct", stage.name))
            return x0_guided

        def wrap_denoiser(self, job: ImageJob, denoiser: Denoiser) -> Denoiser:
            def wrapped(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                log.append(("denoise", float(sigma.reshape(-1)[0])))
                return denoiser(x, sigma)

            return wrapped

        def on_step(self, job: ImageJob, step: StepInfo) -> None:
            log.append(("step", step.index, step.total, self.patch.attached))

        def post_process(self, job: ImageJob, picture: Image.Image) -> Image.Image:
            log.append(("post_process", picture.size))
            return ImageOps.invert(picture) if invert else picture

    return Probe


def _task(checkpoint: Path, **overrides) -> GenerationTask:
    values = dict(prompt="probe: a cat", base_model=str(checkpoint), aspect_ratio="64*64", steps=4, image_number=1,
                  styles=[], seed=7, sampler="euler")
    values.update(overrides)
    return GenerationTask(**values)


def _engine(models: Path, output: Path, features: tuple[type[Feature], ...]) -> Engine:
    return Engine(models_dir=models, output_dir=output, device="cpu", precision="fp32", features=features)


def _entries(log: list, kind: str) -> list[tuple]:
    return [entry[1:] for entry in log if entry[0] == kind]


def test_default_features_are_input_image_freeu_and_sag(engine: Engine) -> None:
    from foci.engine.features import InpaintFeature, UpscaleOrVaryFeature

    assert engine.features == (UpscaleOrVaryFeature, InpaintFeature, FreeUFeature, SagFeature)
    assert FreeUFeature.wanted(GenerationTask(freeu={"enabled": True}))
    assert not FreeUFeature.wanted(GenerationTask()) and not SagFeature.wanted(GenerationTask(sag_scale=0))
    assert SagFeature.wanted(GenerationTask(sag_scale=0.5))


def test_a_feature_takes_part_in_every_step_without_changing_the_image(
        engine: Engine, tiny_models_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    log: list = []
    probed = _engine(tiny_models_dir, tmp_path, FEATURES + (_probe(log),))
    (result,) = probed.generate(_task(tiny_checkpoint), save=False)
    (plain,) = engine.generate(_task(tiny_checkpoint), save=False)

    assert torch.equal(result.latent, plain.latent)  # identity hooks leave the result bit-exact
    assert _entries(log, "prepare") == [(0, 7)]
    assert _entries(log, "schedule") == [(4,)] and _entries(log, "first_latent") == [((1, 4, 8, 8),)]
    assert _entries(log, "step") == [(index, 4, True) for index in range(4)]  # patched while sampling
    assert len(_entries(log, "denoise")) == 4 and _entries(log, "correct") == [("base",)] * 4
    (patch,) = [entry[1] for entry in log if entry[0] == "patch"]
    assert patch.calls == 4 and not patch.attached  # one batched UNet call per euler step, detached after
    assert not probed.loaded_model("base").components.unet._forward_pre_hooks
    assert _entries(log, "post_process") == [((64, 64),)]
    assert [entry[0] for entry in log if entry[0] != "patch"][:3] == ["prepare", "schedule", "first_latent"]


def test_an_unwanted_feature_is_never_prepared(tiny_models_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    log: list = []
    _engine(tiny_models_dir, tmp_path, (_probe(log),)).generate(_task(tiny_checkpoint, prompt="a cat"), save=False)
    assert log == []


def test_post_process_changes_the_saved_picture(engine: Engine, tiny_models_dir: Path, tiny_checkpoint: Path,
                                                tmp_path: Path) -> None:
    log: list = []
    probed = _engine(tiny_models_dir, tmp_path, (_probe(log, invert=True),))
    (result,) = probed.generate(_task(tiny_checkpoint))
    (plain,) = engine.generate(_task(tiny_checkpoint), save=False)
    inverted = np.asarray(ImageOps.invert(plain.image))
    assert np.array_equal(np.asarray(result.image), inverted)
    with Image.open(result.path) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), inverted)
    assert read_metadata(result.path)[0] == "fooocus"


@pytest.mark.parametrize("method", ["joint", "separate"])
def test_steps_are_numbered_over_the_whole_schedule_with_a_refiner(
        tiny_models_dir: Path, tiny_checkpoint: Path, tiny_refiner: Path, tmp_path: Path, method: str) -> None:
    log: list = []
    probed = _engine(tiny_models_dir, tmp_path, (_probe(log),))
    probed.generate(_task(tiny_checkpoint, steps=6, refiner_model=str(tiny_refiner), refiner_switch=0.5,
                          refiner_swap_method=method), save=False)
    assert _entries(log, "step") == [(index, 6, True) for index in range(6)]
    stages = [name for (name,) in _entries(log, "correct")]
    assert stages[0] == "base" and stages[-1] == "refiner" and sorted(stages) == stages
