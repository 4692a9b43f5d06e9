"""The per-image recipe: the steps one image goes through, and the points where features plug in.

    prompt plan → conditioning → schedule → first latent → UNet patches → sampling (step hooks) → decode
    → post-process → save

The :class:`~foci.engine.engine.Engine` does the per-task part — prompt plan, models and LoRAs, conditioning of
every image (``foci.engine.conditioning``) — and then calls :func:`run_image` once per image. Each later step
is a function here or in ``foci.engine.output``. A feature (``foci.engine.features``) is one module whose hooks
join these steps: it may change the schedule or the first latent, add UNet patches and guidance corrections,
wrap the denoiser, watch every step and post-process the picture — without the steps knowing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from foci.engine.conditioning import ImageConditioning, base_stage, refiner_stage
from foci.engine.denoiser import DenoiseStage, GuidanceSettings, GuidedDenoiser
from foci.engine.devices import DevicePlan
from foci.engine.loaded import LoadedModel
from foci.engine.outcomes import GeneratedImage, GenerationError, GenerationInterrupted, ProgressEvent
from foci.engine.output import decode_latent, image_record, save_picture, to_picture, write_debug_dump
from foci.sampling.model_sampling import ModelSampling, native_model_sampling, select_model_sampling
from foci.sampling.noise import NoiseSource
from foci.sampling.samplers import Denoiser, StepInfo, run_sampler
from foci.sampling.schedulers import brownian_tree_range, compute_sigmas
from foci.task import GenerationTask

if TYPE_CHECKING:
    from foci.engine.engine import Engine
    from foci.engine.features import Feature


@dataclass(frozen=True)
class TaskRun:
    """What every image of one task shares: the task, devices, models, features and the caller's callbacks."""

    task: GenerationTask
    plan: DevicePlan
    base: LoadedModel
    refiner: LoadedModel | None
    loras: list[tuple[Path, float]]  # the LoRAs the image record names (performance LoRAs left out)
    features: tuple[type[Feature], ...] = ()
    on_progress: Callable[[ProgressEvent], None] | None = None
    interrupt: Callable[[], str | None] | None = None
    shared: dict[type[Feature], Any] = field(default_factory=dict)  # each feature's per-task state (prepare_task)
    base_loras: list[tuple[Path, float]] = field(default_factory=list)  # all merged into the base, patches included
    patches: list[tuple[Path, float]] = field(default_factory=list)  # the features' patches among them

    @property
    def base_loras_without_patches(self) -> list[tuple[Path, float]]:
        """The base's LoRAs without the features' patches (what Fooocus's synthetic refiner uses)."""
        return [lora for lora in self.base_loras if lora not in self.patches]


@dataclass
class ImageJob:
    """One image on its way through the recipe; every feature hook receives it."""

    run: TaskRun
    index: int
    conditioning: ImageConditioning
    size: tuple[int, int]  # width, height in pixels (of the sampled latent; a feature may change it in prepare)

    @property
    def task(self) -> GenerationTask:
        return self.run.task

    @property
    def seed(self) -> int:
        return self.conditioning.seed

    @property
    def device(self) -> torch.device:
        return self.run.plan.device


@dataclass(frozen=True)
class Schedule:
    """The noise levels to sample through and the step where the refiner takes over."""

    sampling: ModelSampling
    scheduler: str  # the effective scheduler (a model may force its own)
    sigmas: torch.Tensor  # on the device, ending in 0
    switch: int
    denoise: float = 1.0  # below 1: the last steps+1 sigmas of a longer schedule (img2img, §2.6)

    @property
    def total_steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass
class FirstLatent:
    """Where sampling starts: ``latent`` in UNet space on the device and the image's noise."""

    latent: torch.Tensor
    initial_noise: torch.Tensor  # CPU float32, drawn from the image seed
    noise: NoiseSource  # the samplers' per-step noise (Brownian tree, generator)


StepHook = Callable[[ImageJob, StepInfo], None]


# ------------------------------------------------------------------------------------------------- steps
def plan_schedule(task: GenerationTask, base: LoadedModel, device: torch.device) -> Schedule:
    """The model sampling of the base model's prediction type and the task's sigmas (§2.4)."""
    sampling, scheduler = select_model_sampling(task.scheduler, base.components.info.prediction)
    sigmas = compute_sigmas(sampling, scheduler, task.effective_steps, sampler=task.sampler).to(device)
    return Schedule(sampling, scheduler, sigmas, task.switch_step)


def empty_first_latent(job: ImageJob, schedule: Schedule) -> FirstLatent:
    """§2.5: zero latent, CPU float32 noise from the image seed, one Brownian tree per image."""
    width, height = job.size
    info = job.run.base.components.info
    device = job.device
    latent_shape = (1, job.run.base.components.unet.config.in_channels, height // 8, width // 8)
    generator = torch.Generator("cpu").manual_seed(job.seed)
    initial_noise = torch.randn(latent_shape, dtype=torch.float32, generator=generator, device="cpu")
    if device.type != "cpu":
        generator = torch.Generator(device).manual_seed(job.seed)
    latent = info.latent_format.to_unet(torch.zeros(latent_shape)).to(device)
    # Fooocus sizes the Brownian tree from its own schedule of the checkpoint's native sampling (§2.6, §2.7).
    task = job.task
    tree_min, tree_max = brownian_tree_range(native_model_sampling(info.prediction), task.scheduler,
                                             task.effective_steps, sampler=task.sampler, denoise=schedule.denoise)
    noise = NoiseSource(latent, seed=job.seed, sigma_min=tree_min, sigma_max=tree_max, generator=generator)
    return FirstLatent(latent, initial_noise, noise)


def starting_x(first: FirstLatent, schedule: Schedule) -> torch.Tensor:
    """ComfyUI's convention (§2.5): full noise gets sqrt(1 + σ0²), partial denoise σ0."""
    sigmas, noise = schedule.sigmas, first.initial_noise.to(first.latent.device)
    sigma0 = float(sigmas[0])
    full = math.isclose(schedule.sampling.sigma_max, sigma0, rel_tol=1e-5) or sigma0 > schedule.sampling.sigma_max
    scaled = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if full else sigmas[0])
    return scaled + first.latent


def guidance_settings(task: GenerationTask) -> GuidanceSettings:
    """The CFG knobs of a task (§2.8)."""
    return GuidanceSettings(cfg_scale=task.guidance_scale, sharpness=task.sharpness,
                            mimic_scale=task.adaptive_cfg, adm_scaler_end=task.adm_scaler_end,
                            perp_neg_scale=task.perp_neg_scale)


def report_progress(job: ImageJob, step: StepInfo) -> None:
    """Poll the caller's interrupt (raising :class:`GenerationInterrupted`), then report the step."""
    run = job.run
    if run.interrupt is not None and (action := run.interrupt()) in ("skip", "stop"):
        raise GenerationInterrupted(action)
    if run.on_progress is not None:
        count, images = step.total, job.task.image_number
        done = job.index * count + step.index + 1
        run.on_progress(ProgressEvent(job.index, images, step.index + 1, count, 100.0 * done / (count * images),
                                      step.denoised))


def sample(job: ImageJob, schedule: Schedule, first: FirstLatent, denoiser: Denoiser, guided: GuidedDenoiser,
           refiner: DenoiseStage | None, step_hooks: Sequence[StepHook]) -> torch.Tensor:
    """Run the sampler from the first latent; the refiner takes over at the switch step (§2.10).

    Joint swap: the refiner stage replaces the base in ``guided`` after the model call of the switch step, so
    solver history and noise carry over. Separate: two sampler runs with a round trip through VAE space between
    them. Step hooks see every step numbered over the whole schedule, then progress is reported.
    """
    task, sampling, sigmas, switch = job.task, schedule.sampling, schedule.sigmas, schedule.switch
    total_steps = schedule.total_steps
    latent_format = job.run.base.components.info.latent_format

    def after_step(step: StepInfo, offset: int = 0, total: int | None = None) -> None:
        whole = StepInfo(index=offset + step.index, total=total if total is not None else step.total, x=step.x,
                         denoised=step.denoised, sigma=step.sigma)
        for hook in step_hooks:
            hook(job, whole)
        report_progress(job, whole)

    def joint_step(step: StepInfo) -> None:
        if refiner is not None and step.index == switch:
            guided.stage = refiner  # after the model call of step `switch` (§2.10, §2.25.6)
        after_step(step)

    x = starting_x(first, schedule)
    if task.refiner_swap_method == "separate" and switch < total_steps:
        x = run_sampler(task.sampler, denoiser, x, sigmas[: switch + 1], first.noise,
                        lambda step: after_step(step, 0, total_steps), model_sampling=sampling)
        x = latent_format.to_unet(latent_format.to_vae(x))
        if refiner is not None:
            guided.stage = refiner
        return run_sampler(task.sampler, denoiser, x, sigmas[switch:], first.noise,
                           lambda step: after_step(step, switch, total_steps), model_sampling=sampling)
    return run_sampler(task.sampler, denoiser, x, sigmas, first.noise, joint_step, model_sampling=sampling)


# ------------------------------------------------------------------------------------------------ recipe
def run_image(engine: Engine, run: TaskRun, index: int, conditioning: ImageConditioning, *,
              dump: Path | None = None, save: bool = True) -> GeneratedImage:
    """Make image ``index`` of ``run`` from its conditioning: all recipe steps after the conditioning."""
    task, plan, base, refiner = run.task, run.plan, run.base, run.refiner
    job = ImageJob(run, index, conditioning, task.size)
    features = [feature.prepare(job, engine) for feature in run.features if feature.wanted(task)]

    schedule = plan_schedule(task, base, plan.device)
    for feature in features:
        schedule = feature.schedule(job, schedule)
    first = empty_first_latent(job, schedule)
    for feature in features:
        first = feature.first_latent(job, schedule, first)

    stage = base_stage(task, base, schedule.sampling, conditioning, job.size, plan.device)
    refiner_stage_ = (refiner_stage(task, refiner, schedule.sampling, conditioning, job.size, plan.device)
                      if refiner is not None else None)
    corrections = [correction for feature in features for correction in feature.guidance_corrections(job)]
    guided = GuidedDenoiser(stage, guidance_settings(task), corrections)
    denoiser: Denoiser = guided
    for feature in features:
        denoiser = feature.wrap_denoiser(job, denoiser)

    with ExitStack() as patches:
        for patch in (patch for feature in features for patch in feature.unet_patches(job)):
            patches.enter_context(patch)
        x = sample(job, schedule, first, denoiser, guided, refiner_stage_,
                   [feature.on_step for feature in features])
    if not torch.isfinite(x).all():
        raise GenerationError(
            "sampling produced NaN/inf values (the model or precision is unstable on this device); "
            "try --precision fp32")

    final_latent = base.components.info.latent_format.to_vae(x).float().cpu()
    engine.place(plan, [base.components.vae, base.components.unet]
                 + ([refiner.components.unet] if refiner else []))
    pixels = decode_latent(base, final_latent, plan, tiled=any(feature.decode_tiled for feature in features))
    if not torch.isfinite(pixels).all():
        raise GenerationError("the VAE produced NaN/inf values; try --precision fp32 or another VAE")
    picture = to_picture(pixels[0])
    for feature in features:
        picture = feature.post_process(job, picture)

    record = image_record(task, base, refiner, conditioning, job.size, plan, run.loras, engine.hash_cache)
    path = save_picture(picture, task, record, engine.output_dir) if save else None
    if dump is not None:
        write_debug_dump(dump, task, conditioning, first.initial_noise, schedule.sigmas, final_latent, record,
                         schedule.scheduler)
    return GeneratedImage(picture, conditioning.seed, record, path, final_latent)
