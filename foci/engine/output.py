"""Recipe steps "decode" and "save": the final latent to pixels, the image record, the file and the debug dump;
and the VAE encode of input images (Upscale/Vary, Inpaint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from foci import __version__
from foci.engine.conditioning import ImageConditioning
from foci.engine.devices import DevicePlan, is_out_of_memory
from foci.engine.loaded import LoadedModel
from foci.engine.outcomes import GenerationError
from foci.files.hash_cache import HashCache
from foci.imaging.tiles import tiled_vae_decode, tiled_vae_encode
from foci.records.metadata import ImageRecord
from foci.records.outputs import new_output_path, save_image
from foci.task import GenerationTask


def _vae(loaded: LoadedModel):
    vae = loaded.components.vae
    if vae is None:
        raise GenerationError(f"{loaded.path.name} has no VAE; pass a VAE file with --vae")
    return vae


def decode_latent(loaded: LoadedModel, latent: torch.Tensor, plan: DevicePlan, *, tiled: bool = False) -> torch.Tensor:
    """VAE decode in channels_last to ``[B,3,H,W]`` in 0…1 on the CPU (§2.20). ``tiled``: Fooocus's tiled decode
    (Upscale, §2.13); an untiled decode falls back to it when memory runs out."""
    vae = _vae(loaded)
    sample = latent.to(plan.device, dtype=plan.vae_dtype).contiguous(memory_format=torch.channels_last)

    def decode(tile: torch.Tensor) -> torch.Tensor:
        return vae.decode(tile.contiguous(memory_format=torch.channels_last), return_dict=False)[0]

    if not tiled:
        try:
            decoded = decode(sample)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            tiled = True
    if tiled:
        decoded = tiled_vae_decode(sample, decode)
    return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()


def vae_encode_crop(pixels: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` pixels centre-cropped to multiples of 8, as ComfyUI's VAE encode does before encoding."""
    height, width = pixels.shape[-2] // 8 * 8, pixels.shape[-1] // 8 * 8
    top, left = (pixels.shape[-2] % 8) // 2, (pixels.shape[-1] % 8) // 2
    return pixels[..., top:top + height, left:left + width]


def encode_pixels(loaded: LoadedModel, pixels: torch.Tensor, plan: DevicePlan, *, tiled: bool = False) -> torch.Tensor:
    """``[B,3,H,W]`` pixels in 0…1 (sides multiples of 8) → the VAE latent (the distribution's mode, VAE space)
    as CPU float32. ``tiled``: Fooocus's tiled encode (Upscale, §2.13); an untiled encode falls back to it when
    memory runs out."""
    vae = _vae(loaded)
    sample = (pixels * 2.0 - 1.0).to(plan.device, dtype=plan.vae_dtype).contiguous(memory_format=torch.channels_last)

    def encode(tile: torch.Tensor) -> torch.Tensor:
        return vae.encode(tile.contiguous(memory_format=torch.channels_last)).latent_dist.mode()

    if not tiled:
        try:
            return encode(sample).float().cpu()
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
    latent_channels = int(vae.config.latent_channels)
    return tiled_vae_encode(sample, encode, latent_channels=latent_channels).float().cpu()


def to_picture(pixels: torch.Tensor) -> Image.Image:
    """[3,H,W] in 0…1 → 8-bit image, truncating like Fooocus's ``astype(uint8)``."""
    array = np.clip(255.0 * pixels.permute(1, 2, 0).float().cpu().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def image_record(task: GenerationTask, base: LoadedModel, refiner: LoadedModel | None, image: ImageConditioning,
                 size: tuple[int, int], plan: DevicePlan, loras: list[tuple[Path, float]],
                 hash_cache: HashCache) -> ImageRecord:
    """Everything the metadata schemes write about one image; model hashes only when metadata is saved."""
    def digest(path: Path | None) -> str:
        # Hashing a 7 GB checkpoint takes seconds: only when the hash goes into the image (cached on disk).
        if path is None or not path.is_file() or not task.save_metadata:
            return ""
        return hash_cache.short(path)

    return ImageRecord(
        task=task, seed=image.seed, width=size[0], height=size[1],
        positive_items=list(image.prompts.positive), negative_items=list(image.prompts.negative),
        prompt_expansion=image.prompts.expansion, logged_prompt=image.logged_prompt,
        logged_negative_prompt=image.logged_negative_prompt,
        base_model_name=base.path.name, base_model_hash=digest(base.path),
        refiner_model_name=refiner.path.name if refiner else None,
        refiner_model_hash=digest(refiner.path) if refiner else "",
        vae_name=base.vae_path.name if base.vae_path else None,
        loras=[(path.stem, weight, digest(path)) for path, weight in loras],
        software=f"Foci {__version__}", device=plan.describe())


def save_picture(picture: Image.Image, task: GenerationTask, record: ImageRecord, output_dir: Path) -> Path:
    """Write the image under a new dated name in ``output_dir``, with metadata when the task asks for it."""
    return save_image(picture, new_output_path(output_dir, task.output_format),
                      record=record if task.save_metadata else None, scheme=task.metadata_scheme)


def write_debug_dump(folder: Path, task: GenerationTask, image: ImageConditioning, initial_noise: torch.Tensor,
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
