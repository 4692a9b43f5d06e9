"""Upscale/Vary and Inpaint/Outpaint end to end on the tiny models folder (``write_tiny_models``), and the engine
steps they add: denoise schedules, the per-step blend, the synthetic refiner, the Upscale step counts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foci.dev.make_models import write_tiny_models
from foci.engine.engine import Engine, GenerationError, main_prompt
from foci.engine.features.inpaint import (
    ENERGY_SEED_MODULUS,
    SYNTHETIC_REFINER_SWITCH,
    InpaintBlend,
    InpaintFeature,
    synthetic_refiner,
)
from foci.engine.features.vary_upscale import with_denoise
from foci.engine.recipe import Schedule
from foci.imaging.blend import soft_mask
from foci.imaging.masks import outpaint
from foci.sampling.model_sampling import native_model_sampling
from foci.sampling.samplers import StepInfo
from foci.sampling.schedulers import compute_sigmas
from foci.settings.performance import apply_performance
from foci.task import INPAINT_DETAIL, INPAINT_MODIFY, GenerationTask

WIDTH, HEIGHT = 128, 96


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(root)
    return root


@pytest.fixture(scope="module")
def engine(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(models_dir=models, output_dir=tmp_path_factory.mktemp("outputs"), device="cpu", precision="fp32")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[30:60, 40:90] = 255
    return mask


def _task(engine: Engine, picture: np.ndarray, **fields) -> GenerationTask:
    values = {"prompt": "a cat", "base_model": "tiny.safetensors", "seed": 11, "image_number": 1, "styles": [],
              "overwrite_step": 2, **fields}
    return GenerationTask(input_image=engine.inputs.put_bytes(_png(picture)), **values)


# ------------------------------------------------------------------------------------------- end to end
def test_vary_samples_from_the_input_at_its_clamped_size_and_is_deterministic(engine: Engine,
                                                                              picture: np.ndarray) -> None:
    task = _task(engine, picture, uov_method="Vary (Subtle)")
    first = engine.generate(task, save=False)[0]
    again = engine.generate(task, save=False)[0]
    # shape ceil of 128×96 is 128, clamped up to 1024 → 1152×896 (both multiples of 64, §2.13)
    assert first.image.size == (1152, 896) and (first.record.width, first.record.height) == (1152, 896)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.record.task.input_image == task.input_image and first.record.task.uov_method == "Vary (Subtle)"


def test_fast_upscale_returns_the_super_resolved_image_without_sampling(engine: Engine, picture: np.ndarray) -> None:
    task = _task(engine, picture, uov_method="Upscale (Fast 2x)", base_model="not-needed.safetensors")
    (result,) = engine.generate(task, save=False)
    assert result.image.size == (1152, 896)  # 2× is 256×192, below shape ceil 1024 → brought to 1024
    assert result.latent is None


def test_upscale_samples_with_the_upscale_step_count_and_tiled_decode(engine: Engine, picture: np.ndarray) -> None:
    (result,) = engine.generate(_task(engine, picture, uov_method="Upscale (2x)", overwrite_step=1), save=False)
    assert result.image.size == (1152, 896)
    assert result.record.task.steps == 18  # Speed's Upscale-or-Vary steps


def test_inpaint_changes_the_mask_and_keeps_every_pixel_beyond_the_feather(engine: Engine, picture: np.ndarray,
                                                                          mask: np.ndarray) -> None:
    task = _task(engine, picture, inpaint_mask=engine.inputs.put_bytes(_png(mask)), overwrite_step=5)
    (result,) = engine.generate(task, save=False)
    out = np.asarray(result.image)
    assert out.shape == picture.shape
    beyond = soft_mask(mask) == 0
    assert np.array_equal(out[beyond], picture[beyond])
    assert (out[mask > 0] != picture[mask > 0]).mean() > 0.5
    base = engine.loaded_model("base")
    assert not base.components.unet.conv_in._forward_hooks  # the head is detached
    # the synthetic refiner (switch 0.8 → step 4 of 5) ran the last step without the engine patch
    assert not any(path.name.endswith(".fooocus.patch") for path, _ in base.loras)
    assert result.record.loras == [] and result.record.task.refiner_switch == SYNTHETIC_REFINER_SWITCH


def test_outpaint_left_and_top_grows_the_picture(engine: Engine, picture: np.ndarray) -> None:
    (result,) = engine.generate(_task(engine, picture, outpaint=["Left", "Top"], overwrite_step=1), save=False)
    # top: int(0.3·96) = 28 rows; then left: int(0.3·128) = 38 columns
    assert result.image.size == (WIDTH + 38, HEIGHT + 28)
    assert np.array_equal(np.asarray(result.image)[28 + 40:, 38 + 40:], picture[40:, 40:])


def test_debug_inpaint_returns_fill_mask_and_crop(engine: Engine, picture: np.ndarray) -> None:
    small_mask = np.zeros((48, 64), dtype=np.uint8)  # half the image's size: resized like Fooocus
    small_mask[10:20, 10:30] = 255
    task = _task(engine, picture, inpaint_mask=engine.inputs.put_bytes(_png(small_mask)), debug_inpaint=True)
    fill, crop_mask, crop = (np.asarray(image) for image in (r.image for r in engine.generate(task, save=False)))
    assert fill.shape == crop.shape and crop_mask.shape == crop.shape[:2]
    assert set(np.unique(crop_mask)) == {0, 255}
    assert np.array_equal(fill[crop_mask == 0], crop[crop_mask == 0])


def test_a_full_mask_repaints_the_whole_image(engine: Engine, picture: np.ndarray) -> None:
    full = engine.inputs.put_bytes(_png(np.full((HEIGHT, WIDTH), 255, dtype=np.uint8)))
    fill, crop_mask, crop = (np.asarray(r.image) for r in engine.generate(
        _task(engine, picture, inpaint_mask=full, debug_inpaint=True), save=False))
    assert crop_mask.min() == 255 and crop.shape[:2] == crop_mask.shape  # the crop is the whole image
    assert crop.shape == (896, 1152, 3)  # the whole 128×96 image at shape ceil 1024


def test_an_empty_mask_is_one_clear_error(engine: Engine, picture: np.ndarray) -> None:
    empty = engine.inputs.put_bytes(_png(np.zeros((HEIGHT, WIDTH), dtype=np.uint8)))
    with pytest.raises(GenerationError, match="inpaint mask is empty"):
        engine.generate(_task(engine, picture, inpaint_mask=empty, debug_inpaint=True), save=False)


def test_an_input_image_missing_from_the_store_is_one_clear_error(engine: Engine) -> None:
    task = GenerationTask(prompt="a cat", base_model="tiny.safetensors", input_image="0" * 64,
                          uov_method="Vary (Strong)")
    with pytest.raises(GenerationError, match="not in .*upload it again"):
        engine.generate(task, save=False)


# ------------------------------------------------------------------------------------------- the steps
def test_partial_denoise_keeps_the_tail_of_a_longer_schedule() -> None:
    sampling = native_model_sampling("eps")
    task = GenerationTask(steps=30)
    full = compute_sigmas(sampling, "karras", 30, sampler=task.sampler)
    schedule = with_denoise(task, Schedule(sampling, "karras", full, 15), 0.5)
    longer = compute_sigmas(sampling, "karras", 60, sampler=task.sampler)
    assert schedule.denoise == 0.5 and torch.equal(schedule.sigmas, longer[-31:])
    assert with_denoise(task, Schedule(sampling, "karras", full, 15), 1.0).sigmas is full


def test_inpaint_blend_keeps_the_known_region_and_draws_energy_from_seed_plus_one() -> None:
    fill = torch.full((1, 4, 2, 2), 3.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    seen = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.full_like(x, -1.0)

    blend = InpaintBlend(denoiser, fill, mask, seed=41)
    x = torch.zeros(1, 4, 2, 2)
    x0 = blend(x, torch.tensor([2.0]))
    energy = torch.randn((1, 4, 2, 2), generator=torch.Generator().manual_seed(42))
    assert torch.equal(x0, torch.where(mask.bool().expand_as(x0), -1.0, 3.0))
    assert torch.allclose(seen[0], (3.0 + 2.0 * energy) * (1 - mask))
    assert InpaintBlend(denoiser, fill, mask, seed=ENERGY_SEED_MODULUS - 1).energy.initial_seed() == 0


def test_synthetic_refiner_swaps_out_head_and_patch_at_the_switch_step() -> None:
    calls = []

    class Head:
        def detach(self) -> None:
            calls.append("detach")

    class FakeEngine:
        def use_loras(self, loaded, loras) -> None:
            calls.append(("loras", loras))

    class Run:
        base = "base"
        base_loras_without_patches = [("user.safetensors", 0.5)]

    class Job:
        run = Run()

    feature = InpaintFeature(prepared=None, head=Head(), synthetic_switch=4, engine=FakeEngine())
    step = StepInfo(index=3, total=5, x=torch.zeros(1), denoised=torch.zeros(1), sigma=torch.zeros(1))
    feature.on_step(Job(), step)
    assert calls == []
    feature.on_step(Job(), StepInfo(index=4, total=5, x=step.x, denoised=step.x, sigma=step.sigma))
    assert calls == ["detach", ("loras", [("user.safetensors", 0.5)])]


def test_synthetic_refiner_only_with_an_engine_and_no_refiner_of_the_users() -> None:
    image = "a" * 64
    assert synthetic_refiner(GenerationTask(input_image=image, outpaint=["Left"]))
    assert not synthetic_refiner(GenerationTask(input_image=image, outpaint=["Left"], inpaint_method=INPAINT_DETAIL))
    assert not synthetic_refiner(GenerationTask(input_image=image, outpaint=["Left"], refiner_model="r.safetensors"))
    adjusted = InpaintFeature.adjust_task(GenerationTask(input_image=image, outpaint=["Left"], refiner_switch=0.5))
    assert adjusted.refiner_switch == 0.8 and adjusted.switch_step == 24


def test_method_defaults_and_overrides() -> None:
    image = "b" * 64
    default = GenerationTask(input_image=image, outpaint=["Top"])
    detail = GenerationTask(input_image=image, outpaint=["Top"], inpaint_method=INPAINT_DETAIL)
    modify = GenerationTask(input_image=image, outpaint=["Top"], inpaint_method=INPAINT_MODIFY,
                            inpaint_strength=0.7)
    assert (default.effective_inpaint_engine, default.effective_inpaint_strength,
            default.effective_respective_field) == ("v2.6", 1.0, 0.618)
    assert (detail.effective_inpaint_engine, detail.effective_inpaint_strength,
            detail.effective_respective_field) == ("None", 0.5, 0.0)
    assert (modify.effective_inpaint_engine, modify.effective_inpaint_strength,
            modify.effective_respective_field) == ("v2.6", 0.7, 0.0)


@pytest.mark.parametrize(("performance", "method", "steps"), [
    ("Speed", "Upscale (2x)", 18), ("Quality", "Upscale (1.5x)", 36), ("Extreme Speed", "Upscale (2x)", 8),
    ("Lightning", "Upscale (2x)", 4), ("Speed", "Vary (Strong)", 30), ("Quality", "Vary (Subtle)", 60),
])
def test_upscale_uses_the_performance_uov_step_count(performance: str, method: str, steps: int) -> None:
    task, _ = apply_performance(GenerationTask(performance=performance, input_image="c" * 64, uov_method=method))
    assert task.steps == steps


def test_the_inpaint_prompt_comes_first_as_its_own_line() -> None:
    image = "d" * 64
    assert main_prompt(GenerationTask(prompt="a cat", input_image=image, outpaint=["Left"],
                                      inpaint_prompt="detailed face")) == "detailed face\na cat"
    assert main_prompt(GenerationTask(prompt="", input_image=image, outpaint=["Left"],
                                      inpaint_prompt="detailed face")) == "detailed face"
    assert main_prompt(GenerationTask(prompt="a cat", inpaint_prompt="ignored without inpaint")) == "a cat"


def test_task_refuses_unusable_input_combinations() -> None:
    with pytest.raises(ValueError, match="need an input_image"):
        GenerationTask(outpaint=["Left"])
    with pytest.raises(ValueError, match="not both"):
        GenerationTask(input_image="e" * 64, uov_method="Vary (Subtle)", outpaint=["Left"])
    with pytest.raises(ValueError, match="not used"):
        GenerationTask(input_image="e" * 64)
    with pytest.raises(ValueError):
        GenerationTask(input_image="../../etc/passwd", uov_method="Vary (Subtle)")


def test_outpaint_padding_matches_the_picture_size() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    padded, padded_mask = outpaint(image, np.zeros((HEIGHT, WIDTH), dtype=np.uint8), ["left", "top"])
    assert padded.shape[:2] == padded_mask.shape == (HEIGHT + 28, WIDTH + 38)


def test_another_esrgan_file_in_the_upscale_folder_can_be_chosen(engine: Engine, models: Path,
                                                                  picture: np.ndarray) -> None:
    from foci.dev.make_models import write_tiny_upscaler

    write_tiny_upscaler(models / "upscale_models" / "my-esrgan.pth", seed=5)
    task = _task(engine, picture, uov_method="Upscale (Fast 2x)", upscale_model="my-esrgan.pth")
    (result,) = engine.generate(task, save=False)
    default = engine.generate(task.model_copy(update={"upscale_model": "fooocus_upscaler_s409985e5.bin"}),
                              save=False)[0]
    assert result.image.size == default.image.size == (1152, 896)
    assert not np.array_equal(np.asarray(result.image), np.asarray(default.image))  # other weights
    assert result.record.task.upscale_model == "my-esrgan.pth"
    with pytest.raises(GenerationError, match="upscaler 'missing.pth' not found"):
        engine.generate(task.model_copy(update={"upscale_model": "missing.pth"}), save=False)
