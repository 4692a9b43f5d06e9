"""Text-to-image with Fooocus's recipe: the ``Engine`` that the CLI, API and UI call.

    from foci import Engine, GenerationTask
    engine = Engine(models_dir="models", output_dir="outputs")
    images = engine.generate(GenerationTask(prompt="a cat", base_model="my_sdxl.safetensors", seed=1))
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from foci import __version__
from foci.engine.denoiser import BranchConditioning, DenoiseStage, GuidanceSettings, GuidedDenoiser
from foci.engine.devices import DevicePlan, is_out_of_memory, plan_devices
from foci.files.download_hints import download_failure_message
from foci.files.downloads import CatalogueEntry, Downloader, DownloadError, load_catalogue
from foci.files.folders import SETTING_KEYS, ModelFolders, ModelFoldersError, check_model_name
from foci.files.hash_cache import HashCache, mark_corrupted
from foci.guidance.adm import refiner_time_ids, sdxl_size_time_ids
from foci.guidance.freeu import FreeU
from foci.guidance.sag import SelfAttentionGuidance
from foci.models.checkpoint import CorruptFileError, SDXLComponents, load_checkpoint
from foci.models.lora import LoraPatcher
from foci.models.manager import (
    ModelCache,
    VramPolicy,
    choose_vram_policy,
    module_bytes,
    offload_modules,
    place_modules,
)
from foci.records.metadata import ImageRecord
from foci.records.outputs import new_output_path, save_image
from foci.sampling.model_sampling import ModelSampling, native_model_sampling, select_model_sampling
from foci.sampling.noise import NoiseSource
from foci.sampling.samplers import StepInfo, run_sampler
from foci.sampling.schedulers import brownian_tree_range, compute_sigmas
from foci.settings.config import FociSettings
from foci.settings.performance import apply_performance, performance_lora_names
from foci.task import GenerationTask
from foci.text.embeddings import EmbeddingLookup
from foci.text.encoder import EncodedPrompt, PromptEncoder
from foci.text.expansion import ExpansionError, PromptExpansion
from foci.text.prompt_plan import DEFAULT_MAX_LORAS as MAX_LORAS
from foci.text.prompt_plan import ImagePrompts, extract_inline_loras, plan_image_prompts
from foci.text.prompts import PromptPlan
from foci.text.styles import FOOOCUS_V2, StyleLibrary
from foci.text.tokenizers import load_sdxl_tokenizers
from foci.text.wildcards import WildcardLibrary

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
REFINER_AESTHETIC_POSITIVE = 6.0
REFINER_AESTHETIC_NEGATIVE = 2.5
EXPANSION_FILES = ("fooocus_expansion.bin", "fooocus_expansion_positive.txt")
"""Catalogue names of the Fooocus V2 expansion files (saved as pytorch_model.bin and positive.txt)."""
_log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """A problem the user can act on (missing model, NaN output, …); its message is meant to be shown."""


class GenerationInterrupted(Exception):
    """Raised from the step callback when the caller asks to stop or skip."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


@dataclass
class ProgressEvent:
    """One sampling step of one image."""

    image_index: int
    image_count: int
    step: int
    total_steps: int
    percent: float
    denoised: torch.Tensor | None = None


@dataclass
class GeneratedImage:
    """One finished image with everything needed to reproduce it."""

    image: Image.Image
    seed: int
    record: ImageRecord
    path: Path | None
    latent: torch.Tensor  # final latent in VAE space, float32, CPU


@dataclass
class _LoadedModel:
    components: SDXLComponents
    path: Path
    vae_path: Path | None
    key: tuple = ()
    patcher: LoraPatcher | None = None
    loras: list[tuple[Path, float]] = field(default_factory=list)
    encoder: PromptEncoder | None = None


@dataclass
class _ImagePlan:
    seed: int
    prompts: PromptPlan
    positive: EncodedPrompt
    negative: EncodedPrompt
    empty: EncodedPrompt | None = None


def _pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """[3,H,W] in 0…1 → 8-bit image, truncating like Fooocus's ``astype(uint8)``."""
    array = np.clip(255.0 * pixels.permute(1, 2, 0).float().cpu().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "unet").is_dir()


@dataclass
class Engine:
    """Loads models on demand and runs generation tasks. One engine per device; not thread-safe.

    Models are looked up in ``folders`` (Fooocus's ``models/<kind>`` layout under ``models_dir`` unless given);
    with a ``downloader``, files the catalogue knows are fetched when missing.
    """

    models_dir: Path = Path("models")
    output_dir: Path = Path("outputs")
    device: str = "auto"
    precision: str = "auto"
    folders: ModelFolders | None = None
    styles_dirs: tuple[Path, ...] = ()
    wildcards_dirs: tuple[Path, ...] = ()
    downloader: Downloader | None = None
    catalogue: Mapping[str, CatalogueEntry] | None = None
    vram: str = "auto"
    cache_budget_bytes: int | None = None
    accept_paths: bool = True  # False (the server): a model is only ever a name inside its model folders
    _roles: dict[str, tuple] = field(default_factory=dict, repr=False)
    _expansion: tuple[Path, PromptExpansion] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.output_dir = Path(self.output_dir)
        if self.folders is None:
            self.folders = ModelFolders.default(self.models_dir)
        self.hash_cache = HashCache(self.folders.download_folder("checkpoints").parent / ".foci_hashes.json")
        self._models: ModelCache[_LoadedModel] = (ModelCache(self.cache_budget_bytes) if self.cache_budget_bytes
                                                   else ModelCache())

    @classmethod
    def from_settings(cls, settings: FociSettings, *, root: Path, device: str = "auto", precision: str = "auto",
                      downloader: Downloader | None = None, models_dir: Path | None = None) -> Engine:
        """An engine using the folders of a loaded config/preset (``path_*`` keys) below ``root``, or Fooocus's
        layout under ``models_dir`` when given."""
        paths = {key: value for key, value in settings.model_dump().items() if key in SETTING_KEYS}
        folders = ModelFolders.default(models_dir) if models_dir else ModelFolders.from_settings(paths, root)
        return cls(models_dir=folders.download_folder("checkpoints").parent, output_dir=root / settings.path_outputs,
                   device=device, precision=precision, folders=folders,
                   styles_dirs=(root / settings.path_styles,), wildcards_dirs=(root / settings.path_wildcards,),
                   downloader=downloader)

    # ----------------------------------------------------------------------------------------- models
    def plan(self, task: GenerationTask | None = None) -> DevicePlan:
        """Device and dtypes for a task (its own precision wins over the engine's)."""
        precision = task.precision if task is not None and task.precision != "auto" else self.precision
        return plan_devices(self.device, precision)

    def resolve(self, kind: str, name: str, what: str | None = None) -> Path:
        """Find a model file (a path — unless ``accept_paths`` is off —, a name relative to a ``kind`` folder, or a
        bare stem); download it if the catalogue knows it and a downloader is set; else raise a
        :class:`GenerationError` saying where to put it."""
        what = what or kind.rstrip("s")
        if not self.accept_paths:
            try:
                check_model_name(kind, name)
            except ModelFoldersError as error:
                raise GenerationError(str(error)) from None
        candidate = Path(name).expanduser() if self.accept_paths else Path(name)
        if self.accept_paths and (candidate.is_file() or _is_diffusers_folder(candidate)):
            return candidate
        if not candidate.is_absolute() and ".." not in candidate.parts:
            found = self.folders.find(kind, name)
            if found is not None:
                return found
            for folder in self.folders.folders(kind):
                if _is_diffusers_folder(folder / name):
                    return folder / name
            for relative in self.folders.list_files(kind):
                if name in (relative.stem, relative.name):
                    return self.folders.find(kind, relative)
        entry = self._catalogue_entry(kind, candidate.name)
        if entry is not None and self.downloader is not None:
            folder = self.folders.download_folder(kind)
            try:
                return self.downloader.fetch(entry, folder)
            except DownloadError as error:
                raise GenerationError(download_failure_message(
                    error, url=self.downloader.resolve_url(entry.url), file_name=entry.file_name,
                    folder=folder)) from error
        folders = ", ".join(str(f) for f in self.folders.folders(kind))
        hint = f"; download it from {entry.url}" if entry is not None else ""
        raise GenerationError(f"{what} {name!r} not found (looked for a file path, then in {folders}){hint}")

    def _catalogue_entry(self, kind: str, file_name: str) -> CatalogueEntry | None:
        catalogue = self.catalogue if self.catalogue is not None else load_catalogue()
        return next((e for e in catalogue.values() if e.folder == kind and file_name in (e.file_name, e.name)), None)

    def loaded_model(self, role: str = "base") -> _LoadedModel | None:
        """The model last used as ``role`` ("base" or "refiner"), if it is still cached."""
        key = self._roles.get(role)
        return self._models.get(key) if key is not None else None

    def vram_policy(self, plan: DevicePlan) -> VramPolicy:
        return choose_vram_policy(plan.device, self.vram)

    def _load(self, role: str, model: str, vae: str | None, plan: DevicePlan) -> _LoadedModel:
        path = self.resolve("checkpoints", model, "checkpoint")
        vae_path = self.resolve("vae", vae, "VAE") if vae else None
        key = (path.resolve(), vae_path.resolve() if vae_path else None, plan)
        self._roles[role] = key
        pinned = [k for r, k in self._roles.items() if r != role]
        cached = self._models.get(key)
        if cached is not None:
            return cached
        if path.is_file():  # free memory before loading: the file size approximates the weights' size
            scale = 2 if plan.unet_dtype == torch.float32 else 1
            self._models.reserve(path.stat().st_size * scale, pinned=pinned)
        policy = self.vram_policy(plan)
        load_device = plan.device if policy is VramPolicy.HIGH else torch.device("cpu")
        try:
            components = load_checkpoint(path, device=load_device, dtype=plan.unet_dtype, vae_path=vae_path)
        except CorruptFileError as error:
            raise GenerationError(self._corrupt_message(path, error)) from error
        if components.vae is not None:
            if components.vae.dtype != plan.vae_dtype:
                components.vae.to(dtype=plan.vae_dtype)
            components.vae.to(memory_format=torch.channels_last)  # 2–4× faster decode (stack notes §4)
        modules = (components.unet, components.vae, components.text_encoder, components.text_encoder_2)
        for module in modules:
            if module is not None:
                module.eval().requires_grad_(False)
        patcher = LoraPatcher(components.unet, components.text_encoder, components.text_encoder_2)
        loaded = _LoadedModel(components, path, vae_path, key, patcher=patcher)
        self._models.put(key, loaded, module_bytes(modules), pinned=pinned)
        return loaded

    def _corrupt_message(self, path: Path, error: Exception) -> str:
        """A damaged file that the catalogue can fetch again is moved aside as ``*.corrupted`` (§2.21)."""
        if self._catalogue_entry("checkpoints", path.name) is None:
            return f"{error}; the file is damaged: replace it"
        moved = mark_corrupted(path)
        return f"{error}; moved to {moved.name}, it will be downloaded again on the next run"

    def _place(self, plan: DevicePlan, use: list[torch.nn.Module | None]) -> None:
        """Before a step: its modules onto the GPU, the other cached modules back to RAM (normal policy)."""
        policy = self.vram_policy(plan)
        if plan.device.type != "cuda" or policy is VramPolicy.HIGH:
            return
        wanted = {id(module) for module in use if module is not None}
        others = [module for loaded in self._models.values() for module in (
            loaded.components.unet, loaded.components.vae, loaded.components.text_encoder,
            loaded.components.text_encoder_2) if module is not None and id(module) not in wanted]
        offload_modules(others, policy)
        place_modules(use, plan.device, policy)

    @staticmethod
    def _lora_key(loras: list[tuple[Path, float]]) -> list[tuple[Path, float]]:
        return [(path.resolve(), weight) for path, weight in loras]

    @staticmethod
    def _streams_weights(loaded: _LoadedModel) -> bool:
        return bool(getattr(loaded.components.unet, "_foci_sequential_offload", False))

    def _apply_loras(self, loaded: _LoadedModel, loras: list[tuple[Path, float]]) -> None:
        """Merge exactly ``loras`` into the model (restoring the previous set first); no reload from disk."""
        wanted = self._lora_key(loras)
        if wanted == loaded.loras:
            return
        for report in loaded.patcher.apply(loras):
            if report.skipped:
                _log.warning("LoRA %s skipped: %s", report.name, report.skipped)
        loaded.loras = wanted
        if loaded.encoder is not None:
            loaded.encoder.clear_cache()  # conds depend on the text-encoder weights

    def _encoder(self, loaded: _LoadedModel, clip_skip: int) -> PromptEncoder:
        parts = loaded.components
        if parts.text_encoder is None or parts.text_encoder_2 is None:
            raise GenerationError(f"{loaded.path.name} has no text encoders: it cannot be the base model")
        if loaded.encoder is None:
            tokenizer_l, tokenizer_g = load_sdxl_tokenizers(loaded.path if loaded.path.is_dir() else None)
            embeddings = EmbeddingLookup(self.folders.folders("embeddings"))
            loaded.encoder = PromptEncoder(parts.text_encoder, parts.text_encoder_2, tokenizer_l, tokenizer_g,
                                           clip_skip=clip_skip, embeddings=embeddings)
        loaded.encoder.clip_skip = clip_skip
        return loaded.encoder

    def _expander(self, plan: DevicePlan) -> PromptExpansion:
        """The Fooocus V2 GPT-2, loaded once, on the text encoders' device (CPU instead of MPS, §2.3)."""
        folder = next((f for f in self.folders.folders("prompt_expansion")
                       if (f / "pytorch_model.bin").is_file() or (f / "model.safetensors").is_file()), None)
        if folder is None and self.downloader is not None:
            try:
                self.downloader.ensure(list(EXPANSION_FILES), self.folders, self.catalogue)
            except DownloadError as error:
                raise GenerationError(str(error)) from error
        folder = folder or self.folders.download_folder("prompt_expansion")
        if self._expansion is not None and self._expansion[0] == folder:
            return self._expansion[1]
        device = torch.device("cpu") if plan.device.type == "mps" else plan.device
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        try:
            expansion = PromptExpansion(folder, device=device, dtype=dtype)
        except ExpansionError as error:
            raise GenerationError(f"{error} (or leave out the 'Fooocus V2' style)") from error
        self._expansion = (folder, expansion)
        return expansion

    def lora_requests(self, task: GenerationTask, performance_loras: list[tuple[str, float]]
                      ) -> tuple[list[tuple[Path, float]], list[tuple[Path, float]]]:
        """(all LoRAs for the base model, the user's LoRAs for the refiner): UI slots, then inline
        ``<lora:name:weight>`` tags of the main prompt (§1.10), then the performance LoRA (§1.9)."""
        slots = [(lora.name, lora.weight) for lora in task.loras
                 if lora.enabled and lora.name not in ("", "None") and lora.weight != 0]
        hidden = performance_lora_names()
        available = [p.as_posix() for p in self.folders.list_files("loras") if p.name not in hidden]
        _, inline = extract_inline_loras(task.prompt, available, existing=[name for name, _ in slots],
                                         limit=MAX_LORAS)
        user = [(self.resolve("loras", name, "LoRA"), weight) for name, weight in slots + inline]
        performance = [(self.resolve("loras", name, "LoRA"), weight) for name, weight in performance_loras]
        return user + performance, user

    # ------------------------------------------------------------------------------------ generation
    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, debug_dump: Path | None = None,
                 save: bool = True) -> list[GeneratedImage]:
        """Run one task: ``image_number`` images with seeds seed, seed+1, … (§2.23).

        ``interrupt()`` is polled every step; returning ``"skip"`` abandons the current image, ``"stop"`` the
        whole task. ``debug_dump`` writes the tensors a bug report needs (see README).
        """
        plan = self.plan(task)
        task, performance_loras = apply_performance(task)
        if not task.base_model:
            task = task.model_copy(update={"base_model": self._default_model_name()})
        self.resolve("checkpoints", task.base_model, "checkpoint")  # fail (or download) before anything slow
        base_loras, refiner_loras = self.lora_requests(task, performance_loras)
        with torch.inference_mode():
            prompts = self.plan_prompts(task, plan=plan, performance_applied=True)
            base = self._load("base", task.base_model, task.vae, plan)
            if self._streams_weights(base) and self._lora_key(base_loras) != base.loras:
                self._models.pop(base.key)  # weights streamed from RAM cannot be patched in place: reload
                base = self._load("base", task.base_model, task.vae, plan)
            self._apply_loras(base, base_loras)
            refiner = None
            if task.refiner_model and task.refiner_model not in ("None", task.base_model):
                refiner = self._load("refiner", task.refiner_model, None, plan)
                if refiner.path.resolve() == base.path.resolve():
                    refiner = None
                else:
                    self._apply_loras(refiner, refiner_loras)
            encoder = self._encoder(base, task.clip_skip)
            self._place(plan, [base.components.text_encoder, base.components.text_encoder_2])
            images_plan = [self._encode_image(task, encoder, image_prompts) for image_prompts in prompts]
            self._place(plan, [base.components.unet] + ([refiner.components.unet] if refiner else []))
            loras = [(path, weight) for path, weight in base_loras
                     if path.name not in performance_lora_names()]
            results: list[GeneratedImage] = []
            for index, image_plan in enumerate(images_plan):
                if interrupt is not None and interrupt() == "stop":
                    break
                dump = None
                if debug_dump is not None:
                    dump = Path(debug_dump) if index == 0 else Path(debug_dump) / f"image-{index}"
                try:
                    result = self._generate_one(task, plan, base, refiner, image_plan, index,
                                                task.size, on_progress, interrupt, dump, save, loras)
                except GenerationInterrupted as stop:
                    if stop.action == "skip":
                        continue
                    break
                results.append(result)
        return results

    def _default_model_name(self) -> str:
        files = [f for f in self.folders.list_files("checkpoints") if f.suffix in CHECKPOINT_SUFFIXES]
        if files:
            return files[0].as_posix()
        raise GenerationError(
            f"no checkpoint given and none found in {self.folders.download_folder('checkpoints')}: pass --model "
            "FILE (any SDXL .safetensors) or create a test one with `foci dev make-checkpoint --tiny FILE`")

    def plan_prompts(self, task: GenerationTask, *, plan: DevicePlan | None = None,
                     performance_applied: bool = False) -> list[ImagePrompts]:
        """The exact items every image of ``task`` will encode (§2.2): styles, wildcards, arrays and, with the
        ``Fooocus V2`` style, the GPT-2 expansion. Needs no SDXL model (``foci prompt`` uses it)."""
        if not performance_applied:
            task, _ = apply_performance(task)
        library = StyleLibrary.load(self.styles_dirs)
        for warning in library.warnings:
            _log.warning("%s", warning)
        library.validate(task.styles)
        wildcards = WildcardLibrary.load(self.wildcards_dirs)
        needs_expansion = FOOOCUS_V2 in task.styles and bool(task.prompt.strip())
        expand = self._expander(plan or self.plan(task)) if needs_expansion else None
        return [plan_image_prompts(task.prompt, task.negative_prompt, task.styles, seed=seed, image_index=index,
                                   library=library, wildcards=wildcards,
                                   read_wildcards_in_order=task.read_wildcards_in_order, expand=expand)
                for index, seed in enumerate(task.image_seeds())]

    def _encode_image(self, task: GenerationTask, encoder: PromptEncoder, prompts: ImagePrompts) -> _ImagePlan:
        plan = prompts.to_prompt_plan()
        positive = encoder.encode(plan.positive, plan.positive_top_k)
        if math.isclose(task.guidance_scale, 1.0):
            negative = EncodedPrompt(positive.cond.clone(), positive.pooled.clone())
        else:
            negative = encoder.encode(plan.negative, plan.negative_top_k)
        empty = encoder.encode([""], 1) if task.perp_neg_scale > 0 else None
        return _ImagePlan(prompts.seed, plan, positive, negative, empty)

    def _base_stage(self, task: GenerationTask, base: _LoadedModel, sampling: ModelSampling, image: _ImagePlan,
                    size: tuple[int, int], device: torch.device) -> DenoiseStage:
        width, height = size

        def branch(encoded: EncodedPrompt, scale: float) -> BranchConditioning:
            emphasized, consistent = sdxl_size_time_ids(width, height, scale=scale)
            return BranchConditioning(
                cond=encoded.cond.to(device), pooled=encoded.pooled.to(device),
                time_ids=torch.tensor([emphasized], dtype=torch.float32, device=device),
                time_ids_late=torch.tensor([consistent], dtype=torch.float32, device=device))

        empty = branch(image.empty, 1.0) if image.empty is not None else None
        return DenoiseStage(base.components.unet, sampling,
                            branch(image.positive, task.adm_scaler_positive),
                            branch(image.negative, task.adm_scaler_negative), empty, name="base")

    def _refiner_stage(self, task: GenerationTask, refiner: _LoadedModel, sampling: ModelSampling,
                       image: _ImagePlan, size: tuple[int, int], device: torch.device) -> DenoiseStage:
        """Refiner conditioning (§2.10): an SDXL refiner gets the CLIP-G slice + pooled with aesthetic scores
        6.0/2.5; another SDXL model gets the full conds and the same timed ADM emphasis as the base."""
        if refiner.components.info.kind != "sdxl_refiner":
            stage = self._base_stage(task, refiner, sampling, image, size, device)
            stage.empty, stage.name = None, "refiner"
            return stage
        width, height = size
        unet = refiner.components.unet
        context_dim = unet.config.cross_attention_dim

        def branch(encoded: EncodedPrompt, score: float) -> BranchConditioning:
            ids = refiner_time_ids(width, height, aesthetic_score=score)
            return BranchConditioning(cond=encoded.cond[..., -context_dim:].to(device),
                                      pooled=encoded.pooled.to(device),
                                      time_ids=torch.tensor([ids], dtype=torch.float32, device=device))

        return DenoiseStage(unet, sampling, branch(image.positive, REFINER_AESTHETIC_POSITIVE),
                            branch(image.negative, REFINER_AESTHETIC_NEGATIVE), name="refiner")

    def _generate_one(self, task: GenerationTask, plan: DevicePlan, base: _LoadedModel,
                      refiner: _LoadedModel | None, image: _ImagePlan, index: int, size: tuple[int, int],
                      on_progress: Callable[[ProgressEvent], None] | None,
                      interrupt: Callable[[], str | None] | None, dump: Path | None,
                      save: bool, loras: list[tuple[Path, float]]) -> GeneratedImage:
        device = plan.device
        width, height = size
        info = base.components.info
        steps = task.effective_steps
        sampling, scheduler = select_model_sampling(task.scheduler, info.prediction)
        sigmas = compute_sigmas(sampling, scheduler, steps, sampler=task.sampler).to(device)
        total_steps = len(sigmas) - 1
        switch = task.switch_step

        # §2.5: zero latent, CPU float32 noise from the image seed, one Brownian tree per image.
        latent_shape = (1, base.components.unet.config.in_channels, height // 8, width // 8)
        generator = torch.Generator("cpu").manual_seed(image.seed)
        initial_noise = torch.randn(latent_shape, dtype=torch.float32, generator=generator, device="cpu")
        if device.type != "cpu":
            generator = torch.Generator(device).manual_seed(image.seed)
        latent = info.latent_format.to_unet(torch.zeros(latent_shape)).to(device)
        tree_min, tree_max = brownian_tree_range(native_model_sampling(info.prediction), task.scheduler, steps,
                                                 sampler=task.sampler)
        noise = NoiseSource(latent, seed=image.seed, sigma_min=tree_min, sigma_max=tree_max, generator=generator)

        settings = GuidanceSettings(cfg_scale=task.guidance_scale, sharpness=task.sharpness,
                                    mimic_scale=task.adaptive_cfg, adm_scaler_end=task.adm_scaler_end,
                                    perp_neg_scale=task.perp_neg_scale)
        base_stage = self._base_stage(task, base, sampling, image, size, device)
        refiner_stage = (self._refiner_stage(task, refiner, sampling, image, size, device)
                         if refiner is not None else None)
        sag = SelfAttentionGuidance(base.components.unet, scale=task.sag_scale) if task.sag_scale > 0 else None
        denoiser = GuidedDenoiser(base_stage, settings, sag)

        def progress(step: StepInfo, offset: int = 0, total: int | None = None) -> None:
            if interrupt is not None and (action := interrupt()) in ("skip", "stop"):
                raise GenerationInterrupted(action)
            if on_progress is not None:
                count = total if total is not None else step.total
                done = index * count + offset + step.index + 1
                on_progress(ProgressEvent(index, task.image_number, offset + step.index + 1, count,
                                          100.0 * done / (count * task.image_number), step.denoised))

        def joint_callback(step: StepInfo) -> None:
            if refiner_stage is not None and step.index == switch:
                denoiser.stage = refiner_stage  # after the model call of step `switch` (§2.10, §2.25.6)
            progress(step)

        freeu = None
        if task.freeu.enabled:
            freeu = FreeU(base.components.unet, b1=task.freeu.b1, b2=task.freeu.b2, s1=task.freeu.s1,
                          s2=task.freeu.s2)
            freeu.attach()
        if sag is not None:
            sag.attach()
        try:
            x = self._initial_x(initial_noise.to(device), latent, sigmas, sampling)
            if task.refiner_swap_method == "separate" and switch < total_steps:
                x = run_sampler(task.sampler, denoiser, x, sigmas[: switch + 1], noise,
                                lambda step: progress(step, 0, total_steps), model_sampling=sampling)
                x = info.latent_format.to_unet(info.latent_format.to_vae(x))
                if refiner_stage is not None:
                    denoiser.stage = refiner_stage
                x = run_sampler(task.sampler, denoiser, x, sigmas[switch:], noise,
                                lambda step: progress(step, switch, total_steps), model_sampling=sampling)
            else:
                x = run_sampler(task.sampler, denoiser, x, sigmas, noise, joint_callback, model_sampling=sampling)
        finally:
            if freeu is not None:
                freeu.detach()
            if sag is not None:
                sag.detach()
        if not torch.isfinite(x).all():
            raise GenerationError(
                "sampling produced NaN/inf values (the model or precision is unstable on this device); "
                "try --precision fp32")
        final_latent = info.latent_format.to_vae(x).float().cpu()
        self._place(plan, [base.components.vae, base.components.unet]
                    + ([refiner.components.unet] if refiner else []))
        pixels = self._decode(base, final_latent, plan)
        if not torch.isfinite(pixels).all():
            raise GenerationError("the VAE produced NaN/inf values; try --precision fp32 or another VAE")
        picture = _pixels_to_pil(pixels[0])

        record = self._record(task, base, refiner, image, size, plan, loras)
        path = None
        if save:
            path = save_image(picture, new_output_path(self.output_dir, task.output_format),
                              record=record if task.save_metadata else None, scheme=task.metadata_scheme)
        if dump is not None:
            self._dump(dump, task, image, initial_noise, sigmas, final_latent, record, scheduler)
        return GeneratedImage(picture, image.seed, record, path, final_latent)

    @staticmethod
    def _initial_x(noise: torch.Tensor, latent: torch.Tensor, sigmas: torch.Tensor,
                   sampling: ModelSampling) -> torch.Tensor:
        """ComfyUI's convention (§2.5): full noise gets sqrt(1 + σ0²), partial denoise σ0."""
        sigma0 = float(sigmas[0])
        full = math.isclose(sampling.sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sampling.sigma_max
        scaled = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if full else sigmas[0])
        return scaled + latent

    def _decode(self, loaded: _LoadedModel, latent: torch.Tensor, plan: DevicePlan) -> torch.Tensor:
        """VAE decode in channels_last; falls back to tiles when memory runs out (§2.20)."""
        vae = loaded.components.vae
        if vae is None:
            raise GenerationError(f"{loaded.path.name} has no VAE; pass a VAE file with --vae")
        sample = latent.to(plan.device, dtype=plan.vae_dtype).contiguous(memory_format=torch.channels_last)
        try:
            decoded = vae.decode(sample, return_dict=False)[0]
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            decoded = vae.tiled_decode(sample, return_dict=False)[0]
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()

    def _record(self, task: GenerationTask, base: _LoadedModel, refiner: _LoadedModel | None,
                image: _ImagePlan, size: tuple[int, int], plan: DevicePlan,
                loras: list[tuple[Path, float]]) -> ImageRecord:
        def digest(path: Path | None) -> str:
            # Hashing a 7 GB checkpoint takes seconds: only when the hash goes into the image (cached on disk).
            if path is None or not path.is_file() or not task.save_metadata:
                return ""
            return self.hash_cache.short(path)

        return ImageRecord(
            task=task, seed=image.seed, width=size[0], height=size[1],
            positive_items=list(image.prompts.positive), negative_items=list(image.prompts.negative),
            prompt_expansion=image.prompts.expansion,
            base_model_name=base.path.name, base_model_hash=digest(base.path),
            refiner_model_name=refiner.path.name if refiner else None,
            refiner_model_hash=digest(refiner.path) if refiner else "",
            vae_name=base.vae_path.name if base.vae_path else None,
            loras=[(path.stem, weight, digest(path)) for path, weight in loras],
            software=f"Foci {__version__}", device=plan.describe())

    @staticmethod
    def _dump(folder: Path, task: GenerationTask, image: _ImagePlan, initial_noise: torch.Tensor,
              sigmas: torch.Tensor, final_latent: torch.Tensor, record: ImageRecord, scheduler: str) -> None:
        """Write the tensors that let a user prove "same seed, different image" (issue Core, item 7)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "initial_noise": initial_noise, "sigmas": sigmas,
            "cond_positive": image.positive.cond, "pooled_positive": image.positive.pooled,
            "cond_negative": image.negative.cond, "pooled_negative": image.negative.pooled,
            "final_latent": final_latent,
        }
        for name, tensor in arrays.items():
            np.save(folder / f"{name}.npy", tensor.detach().float().cpu().numpy())
        prompts = {"positive": image.prompts.positive, "negative": image.prompts.negative,
                   "positive_top_k": image.prompts.positive_top_k,
                   "negative_top_k": image.prompts.negative_top_k, "expansion": image.prompts.expansion}
        (folder / "prompts.json").write_text(json.dumps(prompts, indent=2, ensure_ascii=False))
        settings = {"task": task.model_dump(mode="json"), "seed": image.seed, "width": record.width,
                    "height": record.height, "effective_scheduler": scheduler, "device": record.device,
                    "software": record.software, "base_model": record.base_model_name,
                    "base_model_hash": record.base_model_hash}
        (folder / "settings.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False))
