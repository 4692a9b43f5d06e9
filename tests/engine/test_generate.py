"""End-to-end generation on tiny synthetic checkpoints: images, metadata, determinism, every sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foci.engine.engine import Engine, GenerationError
from foci.engine.output import decode_latent
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask


def tiny_task(checkpoint: Path, **overrides) -> GenerationTask:
    values = dict(prompt="a cat", base_model=str(checkpoint), aspect_ratio="64*64", steps=4, image_number=1, styles=[],
                  seed=7)
    values.update(overrides)
    return GenerationTask(**values)


def test_two_images_with_consecutive_seeds_and_metadata(engine: Engine, tiny_checkpoint: Path) -> None:
    task = tiny_task(tiny_checkpoint, image_number=2, seed=41, negative_prompt="blurry")
    results = engine.generate(task)
    assert [r.seed for r in results] == [41, 42]
    for result in results:
        assert result.path is not None and result.path.suffix == ".png"
        assert result.path.parent.name.count("-") == 2  # outputs/<YYYY-MM-DD>/
        assert result.image.size == (64, 64)
        scheme, payload = read_metadata(result.path)
        assert scheme == "fooocus"
        restored = task_from_metadata(payload, scheme)
        assert restored.prompt == "a cat" and restored.negative_prompt == "blurry"
        assert restored.seed == result.seed
        assert restored.sampler == task.sampler and restored.steps == task.steps
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))


def test_a1111_scheme_round_trips(engine: Engine, tiny_checkpoint: Path) -> None:
    task = tiny_task(tiny_checkpoint, metadata_scheme="a1111", output_format="jpeg", seed=3,
                     prompt="a [[red,blue]] cat")
    (result,) = engine.generate(task)
    scheme, payload = read_metadata(result.path)
    assert scheme == "a1111"
    assert isinstance(payload, str) and "Seed: 3" in payload
    # Raw prompt as Fooocus logs it (arrays resolved); the typed prompt under Foci's own key.
    assert "Raw prompt: a red cat, " in payload and 'Foci prompt: "a [[red,blue]] cat"' in payload
    restored = task_from_metadata(payload, scheme)
    assert (restored.seed, restored.prompt) == (3, "a [[red,blue]] cat")


def test_same_seed_gives_identical_bytes(tiny_models_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    paths = []
    for run in range(2):
        engine = Engine(models_dir=tiny_models_dir, output_dir=tmp_path / f"run{run}", device="cpu",
                        precision="fp32")
        (result,) = engine.generate(tiny_task(tiny_checkpoint, seed=123))
        paths.append(result.path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_different_seed_changes_image(engine: Engine, tiny_checkpoint: Path) -> None:
    first = engine.generate(tiny_task(tiny_checkpoint, seed=1), save=False)[0]
    second = engine.generate(tiny_task(tiny_checkpoint, seed=2), save=False)[0]
    assert not torch.equal(first.latent, second.latent)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_with_every_scheduler_is_finite(engine: Engine, tiny_checkpoint: Path,
                                                      sampler: str) -> None:
    for scheduler in SCHEDULERS:
        task = tiny_task(tiny_checkpoint, sampler=sampler, scheduler=scheduler, steps=3, aspect_ratio="64*64")
        (result,) = engine.generate(task, save=False)
        assert torch.isfinite(result.latent).all(), (sampler, scheduler)
        assert result.latent.shape == (1, 4, 8, 8)


def test_progress_events_and_interrupts(engine: Engine, tiny_checkpoint: Path) -> None:
    events = []
    engine.generate(tiny_task(tiny_checkpoint, image_number=2, steps=3), on_progress=events.append, save=False)
    assert [(e.image_index, e.step) for e in events] == [(i, s) for i in range(2) for s in (1, 2, 3)]
    assert events[-1].percent == pytest.approx(100.0)

    skipped = engine.generate(tiny_task(tiny_checkpoint, image_number=2, steps=3),
                              interrupt=lambda: "skip", save=False)
    assert skipped == []
    calls = iter(["", "", "stop"] + [""] * 20)
    stopped = engine.generate(tiny_task(tiny_checkpoint, image_number=3, steps=3),
                              interrupt=lambda: next(calls), save=False)
    assert stopped == []


def test_joint_refiner_swap(engine: Engine, tiny_checkpoint: Path, tiny_refiner: Path) -> None:
    plain = engine.generate(tiny_task(tiny_checkpoint, steps=6), save=False)[0]
    joint = engine.generate(tiny_task(tiny_checkpoint, steps=6, refiner_model=str(tiny_refiner),
                                      refiner_switch=0.5), save=False)[0]
    never = engine.generate(tiny_task(tiny_checkpoint, steps=6, refiner_model=str(tiny_refiner),
                                      refiner_switch=1.0), save=False)[0]
    separate = engine.generate(tiny_task(tiny_checkpoint, steps=6, refiner_model=str(tiny_refiner),
                                         refiner_switch=0.5, refiner_swap_method="separate"), save=False)[0]
    assert torch.isfinite(joint.latent).all() and torch.isfinite(separate.latent).all()
    assert not torch.equal(plain.latent, joint.latent)
    assert not torch.equal(joint.latent, separate.latent)
    assert torch.equal(plain.latent, never.latent)  # switch at the last step: the refiner never runs


def test_refiner_equal_to_base_is_ignored(engine: Engine, tiny_checkpoint: Path) -> None:
    plain = engine.generate(tiny_task(tiny_checkpoint), save=False)[0]
    same = engine.generate(tiny_task(tiny_checkpoint, refiner_model=str(tiny_checkpoint)), save=False)[0]
    assert torch.equal(plain.latent, same.latent)


def test_cfg_one_runs_positive_branch_only(engine: Engine, tiny_checkpoint: Path) -> None:
    with_negative = engine.generate(tiny_task(tiny_checkpoint, guidance_scale=1.0, negative_prompt="x"),
                                    save=False)[0]
    without = engine.generate(tiny_task(tiny_checkpoint, guidance_scale=1.0), save=False)[0]
    assert torch.equal(with_negative.latent, without.latent)


def test_addons_change_the_result(engine: Engine, tiny_checkpoint: Path) -> None:
    plain = engine.generate(tiny_task(tiny_checkpoint), save=False)[0].latent
    for extra in ({"freeu": {"enabled": True, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}},
                  {"sag_scale": 0.8}, {"perp_neg_scale": 1.0, "negative_prompt": "dog"}):
        changed = engine.generate(tiny_task(tiny_checkpoint, **extra), save=False)[0].latent
        assert torch.isfinite(changed).all(), extra
        assert not torch.equal(plain, changed), extra
    again = engine.generate(tiny_task(tiny_checkpoint), save=False)[0].latent
    assert torch.equal(plain, again)  # add-ons detach cleanly


def test_debug_dump(engine: Engine, tiny_checkpoint: Path, tmp_path: Path) -> None:
    task = tiny_task(tiny_checkpoint, prompt="a cat\nsecond line", steps=5)
    (result,) = engine.generate(task, debug_dump=tmp_path / "dump", save=False)
    dump = tmp_path / "dump"
    noise = np.load(dump / "initial_noise.npy")
    assert noise.shape == (1, 4, 8, 8) and noise.dtype == np.float32
    generator = torch.Generator().manual_seed(7)
    assert np.array_equal(noise, torch.randn((1, 4, 8, 8), generator=generator).numpy())
    assert np.load(dump / "sigmas.npy").shape == (6,)
    assert np.load(dump / "cond_positive.npy").shape[1] == 154  # two items of 77 tokens
    assert np.load(dump / "pooled_negative.npy").ndim == 2
    assert np.array_equal(np.load(dump / "final_latent.npy"), result.latent.numpy())
    prompts = json.loads((dump / "prompts.json").read_text())
    assert prompts["positive"] == ["a cat", "second line"] and prompts["negative"] == [""]
    settings = json.loads((dump / "settings.json").read_text())
    assert settings["seed"] == 7 and settings["task"]["sampler"] == "dpmpp_2m_sde_gpu"


def test_missing_model_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(GenerationError, match="not found"):
        engine.generate(GenerationTask(prompt="a cat", base_model="nope.safetensors", aspect_ratio="64*64"))


@pytest.mark.parametrize(("extra_keys", "prediction"), [
    ({"v_pred": torch.zeros(())}, "v"),
    ({"edm_mean": torch.zeros(1, 4, 1, 1), "edm_std": torch.ones(1, 4, 1, 1)}, "edm"),
])
def test_v_prediction_and_playground_edm_checkpoints(tiny_checkpoint: Path, tmp_path: Path, extra_keys: dict,
                                                     prediction: str) -> None:
    from safetensors.torch import load_file, save_file

    from foci.models.checkpoint import read_tensor_shapes

    tensors = load_file(str(tiny_checkpoint))
    variant = tmp_path / "checkpoints" / f"variant-{prediction}.safetensors"
    variant.parent.mkdir()
    save_file({**tensors, **extra_keys}, str(variant))
    assert set(extra_keys) <= set(read_tensor_shapes(variant))
    engine = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32")
    plain = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32")
    result = engine.generate(tiny_task(variant, scheduler="karras"), save=False)[0]
    baseline = plain.generate(tiny_task(tiny_checkpoint, scheduler="karras"), save=False)[0]
    assert engine.loaded_model("base").components.info.prediction == prediction
    assert torch.isfinite(result.latent).all()
    assert not torch.allclose(result.latent, baseline.latent)


def test_decode_falls_back_to_tiles_on_out_of_memory(engine: Engine, tiny_checkpoint: Path) -> None:
    engine.generate(tiny_task(tiny_checkpoint), save=False)
    loaded = engine.loaded_model("base")
    vae = loaded.components.vae
    calls = []

    class OutOfMemoryVae:
        def decode(self, sample, return_dict=False):
            calls.append("decode" if not calls else "tile")
            if len(calls) == 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return vae.decode(sample, return_dict=False)

    loaded.components.vae = OutOfMemoryVae()
    try:
        pixels = decode_latent(loaded, torch.zeros(1, 4, 8, 8), engine.plan())
    finally:
        loaded.components.vae = vae
    assert calls == ["decode", "tile", "tile", "tile"]  # Fooocus's tiled decode: three tilings averaged
    assert pixels.shape == (1, 3, 64, 64)


def test_another_sdxl_model_as_refiner(engine: Engine, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from foci.dev.synthetic import write_checkpoint

    other = write_checkpoint(tmp_path / "other-base.safetensors", size="tiny", kind="base", seed=5)
    plain = engine.generate(tiny_task(tiny_checkpoint, steps=6), save=False)[0]
    swapped = engine.generate(tiny_task(tiny_checkpoint, steps=6, refiner_model=str(other)), save=False)[0]
    assert torch.isfinite(swapped.latent).all()
    assert not torch.equal(plain.latent, swapped.latent)


def test_missing_expansion_model_is_skipped_with_a_warning_and_recorded(tiny_models_dir: Path, tiny_checkpoint: Path,
                                                                        tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16.2: offline without the optional expansion files, the default styles still generate; the image's
    metadata lists the styles actually used (no Fooocus V2), so restoring it reproduces the image."""
    from foci.files.downloads import Downloader

    engine = Engine(models_dir=tiny_models_dir, output_dir=tmp_path, device="cpu", precision="fp32",
                    downloader=Downloader(offline=True, environ={}))
    task = tiny_task(tiny_checkpoint, styles=["Fooocus V2", "Fooocus Sharp"])
    with caplog.at_level("WARNING", logger="foci.engine.engine"):
        (result,) = engine.generate(task)
    assert "prompt expansion (Fooocus V2) skipped: offline" in caplog.text
    scheme, payload = read_metadata(result.path)
    restored = task_from_metadata(payload, scheme)
    assert restored.styles == ["Fooocus Sharp"]
    (again,) = engine.generate(restored.model_copy(update={"image_number": 1}))
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
