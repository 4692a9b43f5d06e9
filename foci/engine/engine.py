"""The ``Engine`` that the CLI, API and UI call: it owns models and devices and runs a task image by image.

    from foci import Engine, GenerationTask
    engine = Engine(models_dir="models", output_dir="outputs")
    images = engine.generate(GenerationTask(prompt="a cat", base_model="my_sdxl.safetensors", seed=1))

The engine resolves, downloads, loads and caches models, merges LoRAs, plans prompts and encodes them; each
image then goes through the recipe's steps (``foci.engine.recipe``) with the task's features
(``foci.engine.features``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from foci import __version__
from foci.engine.conditioning import encode_image_prompts
from foci.engine.devices import DevicePlan, plan_devices
from foci.engine.features import FEATURES, Feature
from foci.engine.loaded import LoadedModel
from foci.engine.outcomes import GeneratedImage, GenerationError, GenerationInterrupted, ProgressEvent
from foci.engine.output import save_picture
from foci.engine.recipe import TaskRun, run_image
from foci.files.download_hints import download_failure_message
from foci.files.downloads import CatalogueEntry, Downloader, DownloadError, DownloadProgress, load_catalogue
from foci.files.folders import SETTING_KEYS, ModelFolders, ModelFoldersError, check_model_name
from foci.files.hash_cache import HashCache, mark_corrupted
from foci.files.input_images import InputImageStore
from foci.imaging.inpaint_head import InpaintHead, InpaintHeadError, load_inpaint_head
from foci.imaging.masks import image_to_rgb, mask_image_to_rgb
from foci.imaging.upscaler import Upscaler, UpscalerError, load_upscaler
from foci.models.checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, CorruptFileError, load_checkpoint
from foci.models.lora import LoraPatcher
from foci.models.manager import (
    ModelCache,
    VramPolicy,
    choose_vram_policy,
    module_bytes,
    offload_modules,
    place_modules,
)
from foci.records.image_input import ImageInputError
from foci.records.metadata import ImageRecord
from foci.settings.config import FociSettings
from foci.settings.performance import apply_performance, performance_lora_names
from foci.task import GenerationTask
from foci.text.embeddings import EmbeddingLookup
from foci.text.encoder import PromptEncoder
from foci.text.expansion import ExpansionError, PromptExpansion
from foci.text.prompt_plan import DEFAULT_MAX_LORAS as MAX_LORAS
from foci.text.prompt_plan import ImagePrompts, extract_inline_loras, plan_image_prompts
from foci.text.styles import FOOOCUS_V2, StyleLibrary
from foci.text.tokenizers import load_sdxl_tokenizers
from foci.text.wildcards import WildcardLibrary

__all__ = ["Engine", "GeneratedImage", "GenerationError", "GenerationInterrupted", "ProgressEvent"]

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UPSCALER_FILE = "fooocus_upscaler_s409985e5.bin"
INPAINT_HEAD_FILE = "fooocus_inpaint_head.pth"
EXPANSION_FILES = ("fooocus_expansion.bin", "fooocus_expansion_positive.txt")
"""Catalogue names of the Fooocus V2 expansion files (saved as pytorch_model.bin and positive.txt)."""
_log = logging.getLogger(__name__)


def main_prompt(task: GenerationTask) -> str:
    """The prompt the plan starts from: an inpaint's additional prompt goes first, as a line of its own (§1.7)."""
    if task.input_mode == "inpaint" and task.inpaint_prompt.strip():
        return f"{task.inpaint_prompt}\n{task.prompt}" if task.prompt.strip() else task.inpaint_prompt
    return task.prompt


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
    input_dir: Path | None = None  # input images and masks by content hash; default ``output_dir/inputs``
    features: tuple[type[Feature], ...] = FEATURES  # the optional steps a task may switch on, in hook order
    _roles: dict[str, tuple] = field(default_factory=dict, repr=False)
    _expansion: tuple[Path, PromptExpansion] | None = field(default=None, repr=False)
    _upscaler: tuple[tuple, Upscaler] | None = field(default=None, repr=False)
    _inpaint_head: tuple[Path, InpaintHead] | None = field(default=None, repr=False)
    _download_listener: Callable[[DownloadProgress], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.output_dir = Path(self.output_dir)
        if self.folders is None:
            self.folders = ModelFolders.default(self.models_dir)
        self.hash_cache = HashCache(self.folders.download_folder("checkpoints").parent / ".foci_hashes.json")
        self._models: ModelCache[LoadedModel] = (ModelCache(self.cache_budget_bytes) if self.cache_budget_bytes
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

    @property
    def inputs(self) -> InputImageStore:
        """The store of input images and masks that tasks name by hash."""
        return InputImageStore(Path(self.input_dir) if self.input_dir else self.output_dir / "inputs")

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
                return self.downloader.fetch(entry, folder, progress=self._download_listener)
            except DownloadError as error:
                raise GenerationError(download_failure_message(
                    error, url=self.downloader.resolve_url(entry.url), file_name=entry.file_name,
                    folder=folder)) from error
        folders = ", ".join(str(f) for f in self.folders.folders(kind))
        hint = f"; download it from {entry.url}" if entry is not None else ""
        raise GenerationError(f"{what} {name!r} not found (looked for a file path, then in {folders}){hint}; "
                              f"{self._available_text(kind)}")

    def _available_text(self, kind: str, limit: int = 20) -> str:
        """``available: a.safetensors, b.safetensors`` (the files of ``kind`` one could name instead)."""
        files = [f.as_posix() for f in self.folders.list_files(kind)
                 if kind != "checkpoints" or f.suffix in CHECKPOINT_SUFFIXES]
        if not files:
            return f"no {kind.replace('_', ' ')} there yet"
        more = f" and {len(files) - limit} more" if len(files) > limit else ""
        return f"available: {', '.join(files[:limit])}{more}"

    def _catalogue_entry(self, kind: str, file_name: str) -> CatalogueEntry | None:
        catalogue = self.catalogue if self.catalogue is not None else load_catalogue()
        return next((e for e in catalogue.values() if e.folder == kind and file_name in (e.file_name, e.name)), None)

    def loaded_model(self, role: str = "base") -> LoadedModel | None:
        """The model last used as ``role`` ("base" or "refiner"), if it is still cached."""
        key = self._roles.get(role)
        return self._models.get(key) if key is not None else None

    def vram_policy(self, plan: DevicePlan) -> VramPolicy:
        return choose_vram_policy(plan.device, self.vram)

    def _load(self, role: str, model: str, vae: str | None, plan: DevicePlan) -> LoadedModel:
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
        loaded = LoadedModel(components, path, vae_path, key, patcher=patcher)
        self._models.put(key, loaded, module_bytes(modules), pinned=pinned)
        return loaded

    def _corrupt_message(self, path: Path, error: Exception) -> str:
        """A damaged file that the catalogue can fetch again is moved aside as ``*.corrupted`` (§2.21); a file
        that is no model at all (a ``.txt``) is just named as such."""
        if path.is_file() and path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
            return (f"{path.name} is not a model file (a {path.suffix or 'suffix-less'} file): give an SDXL "
                    f"checkpoint ({', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})")
        if self._catalogue_entry("checkpoints", path.name) is None:
            return f"{error}; the file is damaged: replace it"
        moved = mark_corrupted(path)
        return f"{error}; moved to {moved.name}, it will be downloaded again on the next run"

    def place(self, plan: DevicePlan, use: list[torch.nn.Module | None]) -> None:
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
    def _streams_weights(loaded: LoadedModel) -> bool:
        return bool(getattr(loaded.components.unet, "_foci_sequential_offload", False))

    def use_loras(self, loaded: LoadedModel, loras: list[tuple[Path, float]]) -> None:
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

    def _encoder(self, loaded: LoadedModel, clip_skip: int) -> PromptEncoder:
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
                self.downloader.ensure(list(EXPANSION_FILES), self.folders, self.catalogue,
                                       progress=self._download_listener)
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
                 save: bool = True, on_download: Callable[[DownloadProgress], None] | None = None,
                 on_image: Callable[[GeneratedImage], None] | None = None) -> list[GeneratedImage]:
        """Run one task: ``image_number`` images with seeds seed, seed+1, … (§2.23).

        ``interrupt()`` is polled every step; returning ``"skip"`` abandons the current image, ``"stop"`` the
        whole task. ``debug_dump`` writes the tensors a bug report needs (see README). ``on_download`` gets the
        progress of every model file the task downloads; ``on_image`` each sampled image as soon as it is done
        (and saved), before the next one starts.
        """
        if on_download is not None and self._download_listener is None:
            self._download_listener = on_download
            try:
                return self.generate(task, on_progress=on_progress, interrupt=interrupt, debug_dump=debug_dump,
                                     save=save, on_image=on_image)
            finally:
                self._download_listener = None
        plan = self.plan(task)
        task, performance_loras = apply_performance(task)
        features = tuple(feature for feature in self.features if feature.wanted(task))
        with torch.inference_mode():
            for feature in features:
                pictures = feature.direct_pictures(task, self, plan)
                if pictures is not None:
                    return [self._direct_result(task, picture, plan, save) for picture in pictures]
        for feature in features:
            task = feature.adjust_task(task)
        task = self.without_unavailable_expansion(task, plan)
        task = self.without_unavailable_catalogue_loras(task)
        if not task.base_model:
            task = task.model_copy(update={"base_model": self._default_model_name()})
        self.resolve("checkpoints", task.base_model, "checkpoint")  # fail (or download) before anything slow
        base_loras, refiner_loras = self.lora_requests(task, performance_loras)
        patches = [lora for feature in features for lora in feature.extra_base_loras(task, self)]
        with torch.inference_mode():
            prompts = self.plan_prompts(task, plan=plan, performance_applied=True)
            base, refiner = self._load_models(task, plan, base_loras + patches, refiner_loras)
            encoder = self._encoder(base, task.clip_skip)
            self.place(plan, [base.components.text_encoder, base.components.text_encoder_2])
            conditionings = [encode_image_prompts(task, encoder, image_prompts) for image_prompts in prompts]
            self.place(plan, [base.components.unet] + ([refiner.components.unet] if refiner else []))
            loras = [(path, weight) for path, weight in base_loras
                     if path.name not in performance_lora_names()]
            run = TaskRun(task, plan, base, refiner, loras, features, on_progress, interrupt,
                          base_loras=base_loras + patches, patches=patches)
            for feature in features:
                run.shared[feature] = feature.prepare_task(run, self)
            results: list[GeneratedImage] = []
            for index, conditioning in enumerate(conditionings):
                if interrupt is not None and interrupt() == "stop":
                    break
                dump = None
                if debug_dump is not None:
                    dump = Path(debug_dump) if index == 0 else Path(debug_dump) / f"image-{index}"
                try:
                    result = run_image(self, run, index, conditioning, dump=dump, save=save)
                except GenerationInterrupted as stop:
                    if stop.action == "skip":
                        continue
                    break
                results.append(result)
                if on_image is not None:
                    on_image(result)
        return results

    def _direct_result(self, task: GenerationTask, picture: Image.Image, plan: DevicePlan,
                       save: bool) -> GeneratedImage:
        """A picture made without sampling (Upscale (Fast 2x), inpaint debug): recorded with the task, no models."""
        record = ImageRecord(task=task, seed=task.seed, width=picture.width, height=picture.height,
                             positive_items=[], negative_items=[], base_model_name=Path(task.base_model).name,
                             software=f"Foci {__version__}", device=plan.describe())
        path = save_picture(picture, task, record, self.output_dir) if save else None
        return GeneratedImage(picture, task.seed, record, path, None)

    # ---------------------------------------------------------------------------------- input images
    def input_rgb(self, digest: str, *, what: str = "the input image") -> np.ndarray:
        """An input image from the store as ``(H, W, 3)`` uint8 RGB (EXIF orientation applied, alpha on white)."""
        try:
            with self.inputs.open(digest, what=what) as image:
                return image_to_rgb(image)
        except ImageInputError as error:
            raise GenerationError(str(error)) from None

    def input_size(self, digest: str) -> tuple[int, int]:
        """(width, height) of an input image from its header, without decoding it."""
        try:
            with self.inputs.open(digest) as image:
                return image.size
        except ImageInputError as error:
            raise GenerationError(str(error)) from None

    def input_mask(self, digest: str) -> np.ndarray:
        """A mask image from the store as ``(H, W, 3)`` uint8 (see :func:`foci.imaging.masks.mask_image_to_rgb`)."""
        try:
            with self.inputs.open(digest, what="the inpaint mask") as image:
                return mask_image_to_rgb(image)
        except ImageInputError as error:
            raise GenerationError(str(error)) from None

    def upscaler(self, plan: DevicePlan, name: str = UPSCALER_FILE) -> Upscaler:
        """The upscaler ``name`` in the upscale_models folders (default Fooocus's ESRGAN, downloaded when missing),
        loaded once on the task's device."""
        path = self.resolve("upscale_models", name, "upscaler")
        key = (path.resolve(), plan.device, plan.vae_dtype)
        if self._upscaler is None or self._upscaler[0] != key:
            dtype = torch.float32 if plan.device.type == "cpu" else plan.vae_dtype
            try:
                self._upscaler = (key, load_upscaler(path, device=plan.device, dtype=dtype))
            except UpscalerError as error:
                raise GenerationError(f"{error}; replace the file") from None
        return self._upscaler[1]

    def inpaint_head(self, channels: int) -> InpaintHead:
        """Fooocus's inpaint head (downloaded when missing), loaded once, on the CPU."""
        path = self.resolve("inpaint", INPAINT_HEAD_FILE, "inpaint head")
        if self._inpaint_head is None or self._inpaint_head[0] != path.resolve():
            try:
                self._inpaint_head = (path.resolve(), load_inpaint_head(path, unet_channels=channels))
            except InpaintHeadError as error:
                raise GenerationError(str(error)) from None
        return self._inpaint_head[1]

    def without_unavailable_expansion(self, task: GenerationTask, plan: DevicePlan | None = None) -> GenerationTask:
        """The task without the ``Fooocus V2`` style when the optional expansion model cannot be had (offline and
        missing, download failed, unusable file): one warning, and the image's metadata then records the styles
        actually used, so it reproduces the image. Fooocus likewise goes on without an optional file."""
        if FOOOCUS_V2 not in task.styles or not main_prompt(task).strip():
            return task
        try:
            self._expander(plan or self.plan(task))
        except GenerationError as error:
            _log.warning("prompt expansion (Fooocus V2) skipped: %s", error)
            return task.model_copy(update={"styles": [style for style in task.styles if style != FOOOCUS_V2]})
        return task

    def without_unavailable_catalogue_loras(self, task: GenerationTask) -> GenerationTask:
        """The task without the LoRA slots naming a catalogue file (a preset's LoRA, e.g. the SDXL offset LoRA) that
        cannot be had: one warning each, and the metadata records the LoRAs actually used. A name the catalogue
        does not know stays an error (most likely a typo)."""
        kept = []
        for lora in task.loras:
            if lora.enabled and lora.name not in ("", "None") and lora.weight != 0:
                try:
                    self.resolve("loras", lora.name, "LoRA")
                except GenerationError as error:
                    if self._catalogue_entry("loras", Path(lora.name).name) is None:
                        raise
                    _log.warning("LoRA %s skipped: %s", lora.name, error)
                    continue
            kept.append(lora)
        return task if len(kept) == len(task.loras) else task.model_copy(update={"loras": kept})

    def _load_models(self, task: GenerationTask, plan: DevicePlan, base_loras: list[tuple[Path, float]],
                     refiner_loras: list[tuple[Path, float]]) -> tuple[LoadedModel, LoadedModel | None]:
        """The task's base model and refiner (None when unset or the same file), each with its LoRAs merged."""
        base = self._load("base", task.base_model, task.vae, plan)
        if self._streams_weights(base) and self._lora_key(base_loras) != base.loras:
            self._models.pop(base.key)  # weights streamed from RAM cannot be patched in place: reload
            base = self._load("base", task.base_model, task.vae, plan)
        self.use_loras(base, base_loras)
        if not task.refiner_model or task.refiner_model in ("None", task.base_model):
            return base, None
        refiner = self._load("refiner", task.refiner_model, None, plan)
        if refiner.path.resolve() == base.path.resolve():
            return base, None
        self.use_loras(refiner, refiner_loras)
        return base, refiner

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
        needs_expansion = FOOOCUS_V2 in task.styles and bool(main_prompt(task).strip())
        expand = self._expander(plan or self.plan(task)) if needs_expansion else None
        return [plan_image_prompts(main_prompt(task), task.negative_prompt, task.styles, seed=seed, image_index=index,
                                   library=library, wildcards=wildcards,
                                   read_wildcards_in_order=task.read_wildcards_in_order, expand=expand)
                for index, seed in enumerate(task.image_seeds())]
