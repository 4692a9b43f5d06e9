"""Synthetic SDXL checkpoints: exact original layout, determinism, streamed safetensors writer."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from foci.dev.synthetic import checkpoint_layout, synthetic_tensor, write_checkpoint, write_vae


def _part(key: str) -> str:
    if key.startswith("model.diffusion_model."):
        return "unet"
    if key.startswith("first_stage_model."):
        return "vae"
    return ".".join(key.split(".")[:3])


def test_full_base_layout_matches_real_sdxl_file() -> None:
    layout = checkpoint_layout("full", "base")
    assert len(layout) == 2515
    assert Counter(map(_part, layout)) == {
        "unet": 1680,
        "conditioner.embedders.0": 197,
        "conditioner.embedders.1": 390,
        "vae": 248,
    }
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.0.proj.weight": (10240, 1280),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 77),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
        "conditioner.embedders.1.model.logit_scale": (),
    }
    assert {key: layout[key] for key in expected} == expected
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" not in layout
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in layout  # level 0 has no attention


def test_full_refiner_layout() -> None:
    layout = checkpoint_layout("full", "refiner")
    assert Counter(map(_part, layout)) == {"unet": 1220, "conditioner.embedders.0": 390, "vae": 248}
    assert layout["model.diffusion_model.label_emb.0.0.weight"] == (1536, 2560)
    assert layout["model.diffusion_model.input_blocks.0.0.weight"] == (384, 4, 3, 3)
    assert layout["model.diffusion_model.input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight"] == (
        768,
        1280,
    )
    assert layout["model.diffusion_model.output_blocks.2.1.conv.weight"] == (1536, 1536, 3, 3)
    assert layout["conditioner.embedders.0.model.text_projection"] == (1280, 1280)
    assert not any(key.startswith("conditioner.embedders.1.") for key in layout)


def test_tiny_file_header_is_the_layout_and_bytes_are_deterministic(tmp_path) -> None:
    first = write_checkpoint(tmp_path / "a.safetensors", seed=0)
    again = write_checkpoint(tmp_path / "b.safetensors", seed=0)
    other = write_checkpoint(tmp_path / "c.safetensors", seed=1)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()

    raw = first.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len % 8 == 0
    header = json.loads(raw[8 : 8 + header_len])
    assert header.pop("__metadata__")["format"] == "pt"
    layout = checkpoint_layout("tiny", "base")
    assert {key: tuple(entry["shape"]) for key, entry in header.items()} == layout
    assert max(entry["data_offsets"][1] for entry in header.values()) == len(raw) - 8 - header_len

    tensors = load_file(str(first))
    ids = tensors["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and ids.tolist() == [list(range(77))]
    assert tensors["model.diffusion_model.out.2.weight"].dtype == torch.float16
    norm = "model.diffusion_model.input_blocks.1.0.in_layers.0"
    assert torch.equal(tensors[norm + ".weight"], torch.ones(64, dtype=torch.float16))
    assert torch.equal(tensors[norm + ".bias"], torch.zeros(64, dtype=torch.float16))
    assert tensors["conditioner.embedders.1.model.logit_scale"].item() == pytest.approx(
        math.log(1 / 0.07), 1e-3
    )
    conv = tensors["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].float()
    assert conv.std().item() == pytest.approx(1 / math.sqrt(64 * 9), rel=0.05)
    differs = load_file(str(other))["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].float()
    assert not torch.equal(conv, differs)
    # The value depends only on (seed, name, shape), not on the position in the file.
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(tensors[key], synthetic_tensor(key, (4, 64, 3, 3), seed=0, dtype=torch.float16))


def test_tiny_refiner_and_dtype(tmp_path) -> None:
    path = write_checkpoint(tmp_path / "r.safetensors", kind="refiner", dtype=torch.bfloat16, seed=3)
    tensors = load_file(str(path))
    assert set(tensors) == set(checkpoint_layout("tiny", "refiner"))
    assert tensors["model.diffusion_model.label_emb.0.0.weight"].shape == (256, 5 * 32 + 64)
    assert tensors["model.diffusion_model.label_emb.0.0.weight"].dtype == torch.bfloat16


def test_write_vae_uses_bare_sgm_names(tmp_path) -> None:
    tensors = load_file(str(write_vae(tmp_path / "vae.safetensors", seed=5)))
    checkpoint_vae = {
        key.removeprefix("first_stage_model."): shape
        for key, shape in checkpoint_layout("tiny", "base").items()
        if key.startswith("first_stage_model.")
    }
    assert {key: tuple(value.shape) for key, value in tensors.items()} == checkpoint_vae
    assert "encoder.mid.attn_1.q.weight" in tensors and "post_quant_conv.weight" in tensors
    assert not any(key.startswith("first_stage_model.") for key in tensors)
