"""Model manager: LRU cache with a byte budget, VRAM policy choice, LoRA switching without reloads, corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import foci.engine.engine as pipeline
from foci.dev.synthetic import write_checkpoint
from foci.engine.engine import Engine, GenerationError
from foci.files.downloads import CatalogueEntry
from foci.models.manager import GIB, ModelCache, VramPolicy, choose_vram_policy
from foci.task import GenerationTask, LoraSpec
from tests.engine.test_presets_e2e import tiny_lora_tensors


def tiny_task(checkpoint: Path, **overrides) -> GenerationTask:
    values = dict(prompt="a cat", base_model=str(checkpoint), aspect_ratio="64*64", steps=2, image_number=1,
                  styles=[], seed=5)
    return GenerationTask(**(values | overrides))


def test_cache_evicts_least_recently_used_unpinned() -> None:
    cache: ModelCache[str] = ModelCache(budget_bytes=100)
    assert cache.put("a", "A", 40) == []
    assert cache.put("b", "B", 40) == []
    assert cache.get("a") == "A"  # a is now the most recent
    assert cache.put("c", "C", 40) == ["b"]
    assert cache.cached_keys() == ["a", "c"]
    assert cache.put("d", "D", 90, pinned=["c"]) == ["a"]  # c pinned, d kept although over budget
    assert cache.cached_keys() == ["c", "d"] and cache.total_bytes == 130
    assert cache.reserve(50) == ["c", "d"]
    assert cache.pop("zzz") is None


@pytest.mark.parametrize(("device", "requested", "total", "expected"), [
    ("cpu", "auto", None, VramPolicy.HIGH),
    ("cuda", "auto", 4 * GIB, VramPolicy.LOW),
    ("cuda", "auto", 8 * GIB, VramPolicy.NORMAL),
    ("cuda", "auto", 24 * GIB, VramPolicy.HIGH),
    ("cuda", "low", 80 * GIB, VramPolicy.LOW),
    ("cpu", "normal", None, VramPolicy.NORMAL),
])
def test_vram_policy(device: str, requested: str, total: int | None, expected: VramPolicy) -> None:
    assert choose_vram_policy(torch.device(device), requested, total_bytes=total) is expected


def test_unknown_vram_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--vram"):
        choose_vram_policy(torch.device("cpu"), "huge")


def test_second_checkpoint_under_budget_evicts_the_first(tiny_checkpoint: Path, tmp_path: Path) -> None:
    other = write_checkpoint(tmp_path / "checkpoints" / "other.safetensors", size="tiny", kind="base", seed=9)
    engine = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32",
                    cache_budget_bytes=1)  # smaller than any model: only the one in use stays
    engine.generate(tiny_task(tiny_checkpoint), save=False)
    first = engine.loaded_model("base")
    engine.generate(tiny_task(other), save=False)
    assert engine.loaded_model("base").path == other
    assert [key[0] for key in engine._models.cached_keys()] == [other.resolve()]
    assert first.path == tiny_checkpoint
    roomy = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32",
                   cache_budget_bytes=64 * GIB)
    roomy.generate(tiny_task(tiny_checkpoint), save=False)
    roomy.generate(tiny_task(other), save=False)
    assert len(roomy._models.cached_keys()) == 2


def test_switching_loras_never_reloads_the_checkpoint(tiny_checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    tensors = tiny_lora_tensors(tiny_checkpoint)
    save_file(tensors, str(loras / "one.safetensors"))
    save_file({k: v * 2 if k.endswith("up.weight") else v for k, v in tensors.items()}, str(loras / "two.safetensors"))
    calls = []
    real_load = pipeline.load_checkpoint

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_checkpoint", counting_load)
    engine = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32")
    plain = engine.generate(tiny_task(tiny_checkpoint), save=False)[0].latent
    one = engine.generate(tiny_task(tiny_checkpoint, loras=[LoraSpec(name="one.safetensors", weight=1.0)]),
                          save=False)[0].latent
    two = engine.generate(tiny_task(tiny_checkpoint, loras=[LoraSpec(name="two.safetensors", weight=1.0)]),
                          save=False)[0].latent
    inline = engine.generate(tiny_task(tiny_checkpoint, prompt="a cat <lora:one:1.0>"), save=False)[0].latent
    again = engine.generate(tiny_task(tiny_checkpoint), save=False)[0].latent
    assert len(calls) == 1
    assert not torch.equal(plain, one) and not torch.equal(one, two)
    assert torch.equal(one, inline)  # the inline tag is the same LoRA at the same weight
    assert torch.equal(plain, again)  # LoRAs removed bit-exactly, prompt cache cleared


def test_corrupt_download_is_moved_aside(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    broken = checkpoints / "known.safetensors"
    shutil.copy(tiny_checkpoint, broken)
    broken.write_bytes(broken.read_bytes()[:-1000])
    mine = checkpoints / "mine.safetensors"
    shutil.copy(broken, mine)
    entry = CatalogueEntry(name="known.safetensors", url="https://example.invalid/known.safetensors",
                           folder="checkpoints", size=None, sha256=None, licence="test")
    engine = Engine(models_dir=tmp_path, output_dir=tmp_path / "out", device="cpu", precision="fp32",
                    catalogue={entry.name: entry})
    with pytest.raises(GenerationError, match=r"truncated.*moved to known\.safetensors\.corrupted"):
        engine.generate(tiny_task(broken), save=False)
    assert not broken.exists() and (checkpoints / "known.safetensors.corrupted").is_file()
    with pytest.raises(GenerationError, match="damaged: replace it"):
        engine.generate(tiny_task(mine), save=False)
    assert mine.exists()  # a file Foci cannot fetch again is never moved
