"""Golden results: final latents and decoded pixels of fixed tiny-model runs, recorded once and compared after
every refactoring (several samplers, refiner on/off, LoRA on/off, FreeU, SAG).

The tiny models and the tasks are deterministic; the recorded arrays live in ``tests/golden/golden.npz``. Latents
are compared to 1e-5 relative and pixels to one grey level: the same code on another CPU may round its float
kernels differently, a behaviour change moves them much further. Re-record (only after an intended change) with
``FOCI_RECORD_GOLDEN=1 python -m pytest tests -k golden``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

GOLDEN = Path(__file__).parent / "golden" / "golden.npz"

CASES: dict[str, dict] = {
    "dpmpp_2m_sde_karras": {},
    "euler_a_normal": {"sampler": "euler_ancestral", "scheduler": "normal", "seed": 11},
    "unipc_sharp_cfg7": {"sampler": "uni_pc", "scheduler": "exponential", "sharpness": 6.0, "guidance_scale": 7.0},
    "dpmpp_3m_sde_refiner": {"sampler": "dpmpp_3m_sde_gpu", "refiner_model": "tiny-refiner.safetensors",
                             "refiner_switch": 0.5, "steps": 6},
    "refiner_separate": {"refiner_model": "tiny-refiner.safetensors", "refiner_switch": 0.6,
                         "refiner_swap_method": "separate", "sampler": "dpmpp_2m", "steps": 5},
    "lora": {"loras": [{"name": "golden-lora.safetensors", "weight": 0.8}], "seed": 5},
    "freeu_sag": {"freeu": {"enabled": True}, "sag_scale": 0.75, "sampler": "euler", "seed": 9},
    "two_images_negative": {"image_number": 2, "negative_prompt": "blurry", "sampler": "heun", "steps": 3},
}


def _golden_lora(checkpoint: Path, path: Path) -> None:
    from foci.models.checkpoint import load_checkpoint
    from foci.models.lora import lora_module_names

    components = load_checkpoint(checkpoint)
    names = lora_module_names(components.unet, components.text_encoder, components.text_encoder_2)
    generator = torch.Generator().manual_seed(1234)
    tensors = {}
    for name, (component, module_path) in sorted(names.items()):
        if not name.startswith(("lora_unet_", "lora_te1_")) or not name.endswith(("to_q", "to_v", "q_proj")):
            continue
        weight = getattr(components, component).get_submodule(module_path).weight
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=generator) * 0.05
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=generator) * 0.05
        tensors[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def golden_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from foci.engine.engine import Engine

    root = tmp_path_factory.mktemp("golden")
    models = root / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "loras").mkdir()
    for name in ("tiny-base.safetensors", "tiny-refiner.safetensors"):
        (models / "checkpoints" / name).symlink_to(tiny_models_dir / "checkpoints" / name)
    base = tiny_models_dir / "checkpoints" / "tiny-base.safetensors"
    _golden_lora(base, models / "loras" / "golden-lora.safetensors")
    return Engine(models_dir=models, output_dir=root / "outputs", device="cpu", precision="fp32")


def _run(engine, overrides: dict) -> tuple[np.ndarray, np.ndarray]:
    from foci.task import GenerationTask

    values = dict(prompt="a cat\nin a hat", base_model="tiny-base.safetensors", aspect_ratio="64*72", steps=4,
                  image_number=1, styles=["Fooocus Sharp"], seed=7)
    values.update(overrides)
    results = engine.generate(GenerationTask(**values))
    latents = np.stack([r.latent.numpy() for r in results])
    pixels = np.stack([np.asarray(r.image) for r in results])
    return latents, pixels


def test_golden_results_are_unchanged(golden_engine) -> None:
    computed = {}
    for name, overrides in CASES.items():
        computed[f"{name}.latent"], computed[f"{name}.pixels"] = _run(golden_engine, overrides)
    if os.environ.get("FOCI_RECORD_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **computed)
    recorded = np.load(GOLDEN)
    assert sorted(recorded.files) == sorted(computed)
    for key, value in computed.items():
        if key.endswith(".latent"):
            np.testing.assert_allclose(value, recorded[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            difference = np.abs(value.astype(int) - recorded[key].astype(int)).max()
            assert difference <= 1, (key, difference)
    # The cases really differ from each other (each feature reaches the result).
    latents = [computed[f"{name}.latent"][0] for name in CASES]
    assert all(not np.allclose(a, b) for i, a in enumerate(latents) for b in latents[i + 1:])
