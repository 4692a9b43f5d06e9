"""Checkpoint loading: detection from shapes, exact conversion, bad files, VAE override, diffusers folders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foci.dev.synthetic import checkpoint_layout, component_configs, write_checkpoint, write_vae
from foci.models.checkpoint import (
    CheckpointError,
    components_from_state_dict,
    detect_architecture,
    load_checkpoint,
    load_shipped_config,
    load_vae,
    read_tensor_shapes,
)
from foci.models.latent import PLAYGROUND_V25_LATENT, SDXL_LATENT

FULL_PARAMS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}
REFINER_UNET_PARAMS = 2_259_526_660


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_state_dict(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {
        key: torch.empty(
            shape, device="meta", dtype=torch.int64 if key.endswith("position_ids") else torch.float16
        )
        for key, shape in layout.items()
    }


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_base.safetensors", kind="base", seed=0)


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory) -> Path:
    return write_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny_refiner.safetensors", kind="refiner", seed=0
    )


@pytest.fixture(scope="module")
def base_components(tiny_base):
    return load_checkpoint(tiny_base)


# ---------------------------------------------------------------------------------------------------------
# (a) full-size layout proof on the meta device
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_full_size_layout_converts_exactly_onto_shipped_architecture(kind: str) -> None:
    model = f"sdxl_{kind}"
    state_dict = _meta_state_dict(checkpoint_layout("full", kind))
    components = components_from_state_dict(state_dict, f"full_{kind}.safetensors", device="meta")
    info = components.info
    assert info.kind == model and info.prediction == "eps" and info.latent_format == SDXL_LATENT
    # Derived from shapes alone, the configs are exactly the shipped SDXL 1.0 ones.
    assert info.unet_config == load_shipped_config(model, "unet")
    assert info.vae_config == load_shipped_config(model, "vae")
    assert info.text_encoder_2_config == load_shipped_config(model, "text_encoder_2")
    # Loading is strict (no missing/unexpected keys, equal shapes): every parameter came from the file.
    assert _params(components.vae) == FULL_PARAMS["vae"]
    assert _params(components.text_encoder_2) == FULL_PARAMS["text_encoder_2"]
    assert components.text_encoder_2.text_projection.weight.shape == (1280, 1280)
    if kind == "base":
        assert info.text_encoder_config == load_shipped_config(model, "text_encoder")
        assert _params(components.unet) == FULL_PARAMS["unet"]
        assert _params(components.text_encoder) == FULL_PARAMS["text_encoder"]
    else:
        assert info.text_encoder_config is None and components.text_encoder is None
        assert _params(components.unet) == REFINER_UNET_PARAMS
    assert components.unet.dtype == torch.float32


def test_prediction_and_latent_format_markers() -> None:
    shapes = checkpoint_layout("tiny", "base")
    assert detect_architecture(shapes, "x").prediction == "eps"
    assert detect_architecture({**shapes, "v_pred": ()}, "x").prediction == "v"
    info = detect_architecture(
        {**shapes, "edm_mean": (1, 4, 1, 1), "edm_std": (1, 4, 1, 1)}, "pg.safetensors"
    )
    assert info.prediction == "edm" and info.latent_format == PLAYGROUND_V25_LATENT
    assert info.vae_config["scaling_factor"] == 0.5


# ---------------------------------------------------------------------------------------------------------
# (b) tiny round trip
# ---------------------------------------------------------------------------------------------------------


def test_tiny_base_round_trip(tiny_base, base_components) -> None:
    c = base_components
    configs = component_configs("tiny", "base")
    assert c.info.kind == "sdxl_base" and c.source == tiny_base
    assert c.info.unet_config == configs["unet"] and c.info.vae_config == configs["vae"]
    assert c.info.text_encoder_config == configs["text_encoder"]
    assert c.info.text_encoder_2_config == configs["text_encoder_2"]

    raw = load_file(str(tiny_base))
    assert torch.equal(c.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"].float())
    assert torch.equal(
        c.unet.up_blocks[0].upsamplers[0].conv.weight,
        raw["model.diffusion_model.output_blocks.2.2.conv.weight"].float(),
    )
    g = "conditioner.embedders.1.model."
    in_proj = raw[g + "transformer.resblocks.1.attn.in_proj_weight"].float()
    attention = c.text_encoder_2.text_model.encoder.layers[1].self_attn
    assert torch.equal(attention.k_proj.weight, in_proj[128:256])
    assert torch.equal(c.text_encoder_2.text_projection.weight, raw[g + "text_projection"].float().T)
    q = raw["first_stage_model.decoder.mid.attn_1.q.weight"].float()[:, :, 0, 0]
    assert torch.equal(c.vae.decoder.mid_block.attentions[0].to_q.weight, q)
    assert not any(p.requires_grad for p in c.unet.parameters())

    torch.manual_seed(0)
    with torch.no_grad():
        eps = c.unet(
            torch.randn(2, 4, 8, 8),
            torch.tensor([999.0, 10.0]),
            encoder_hidden_states=torch.randn(2, 77, 192),
            added_cond_kwargs={"text_embeds": torch.randn(2, 64), "time_ids": torch.randn(2, 6)},
        ).sample
        image = c.vae.decode(torch.randn(1, 4, 8, 8)).sample
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
        hidden = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        pooled = c.text_encoder_2(ids).text_embeds
    assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all() and eps.std() > 0.1
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all() and image.std() > 0.1
    assert hidden.shape == (1, 77, 64) and pooled.shape == (1, 64) and torch.isfinite(pooled).all()


def test_tiny_refiner_round_trip(tiny_refiner) -> None:
    c = load_checkpoint(tiny_refiner, dtype=torch.bfloat16)
    assert c.info.kind == "sdxl_refiner" and c.text_encoder is None
    assert c.info.unet_config == component_configs("tiny", "refiner")["unet"]
    assert c.unet.config.projection_class_embeddings_input_dim == 5 * 32 + 64
    assert c.unet.dtype == torch.bfloat16 and c.text_encoder_2.dtype == torch.bfloat16
    with torch.no_grad():
        eps = c.unet(
            torch.randn(1, 4, 8, 8, dtype=torch.bfloat16),
            torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 77, 128, dtype=torch.bfloat16),
            added_cond_kwargs={
                "text_embeds": torch.randn(1, 64, dtype=torch.bfloat16),
                "time_ids": torch.randn(1, 5, dtype=torch.bfloat16),
            },
        ).sample
    assert torch.isfinite(eps.float()).all()


def test_other_seed_gives_other_weights(tmp_path, base_components) -> None:
    other = load_checkpoint(write_checkpoint(tmp_path / "s1.safetensors", seed=1))
    assert not torch.equal(other.unet.conv_in.weight, base_components.unet.conv_in.weight)
    assert other.info.unet_config == base_components.info.unet_config


def test_pickle_checkpoint_with_state_dict_wrapper(tmp_path, tiny_base, base_components) -> None:
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_base)), "global_step": 7}, path)
    assert read_tensor_shapes(path) == checkpoint_layout("tiny", "base")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.unet.conv_out.weight, base_components.unet.conv_out.weight)


# ---------------------------------------------------------------------------------------------------------
# (c) bad input
# ---------------------------------------------------------------------------------------------------------


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_truncated_file(tmp_path, tiny_base) -> None:
    path = tmp_path / "truncated.safetensors"
    data = tiny_base.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated")


def test_random_bytes_empty_and_unknown_suffix(tmp_path) -> None:
    noise = os.urandom(4096)
    (tmp_path / "noise.safetensors").write_bytes(noise)
    _expect_error(tmp_path / "noise.safetensors")
    (tmp_path / "noise.ckpt").write_bytes(noise)
    _expect_error(tmp_path / "noise.ckpt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect_error(tmp_path / "empty.safetensors", "empty")
    (tmp_path / "model.gguf").write_bytes(noise)
    _expect_error(tmp_path / "model.gguf", "unsupported")
    _expect_error(tmp_path / "missing.safetensors", "not found")


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"], "Stable Diffusion 1"),
        (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], "Stable Diffusion 2"),
        (["double_blocks.0.img_attn.qkv.weight"], "Flux"),
        (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "Stable Diffusion 3"),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["something.else.weight"], "unknown layout"),
    ],
)
def test_other_model_families_are_named(tmp_path, keys: list[str], family: str) -> None:
    path = tmp_path / "other_model.safetensors"
    tensors = {key: torch.zeros(2, 2) for key in keys}
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3)
    if family == "unknown layout":
        del tensors["model.diffusion_model.input_blocks.0.0.weight"]
    save_file(tensors, str(path))
    message = _expect_error(path, family)
    if family.startswith("Stable Diffusion 1"):
        assert "Foci needs an SDXL checkpoint" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    zipped = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1), "x": Payload()}}, zipped)
    _expect_error(zipped, "could run code")
    legacy = tmp_path / "evil_legacy.pt"
    with legacy.open("wb") as handle:
        pickle.dump({"w": Payload()}, handle)
    _expect_error(legacy)
    assert not marker.exists()


def test_missing_and_unexpected_tensors(tmp_path, tiny_base) -> None:
    tensors = load_file(str(tiny_base))
    missing = dict(tensors)
    del missing["model.diffusion_model.input_blocks.1.0.in_layers.2.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    _expect_error(tmp_path / "missing.safetensors", "UNet", "missing", "down_blocks.0.resnets.0.conv1.bias")
    extra = dict(tensors)
    extra["model.diffusion_model.input_blocks.1.0.extra_layer.weight"] = torch.zeros(3)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    _expect_error(tmp_path / "extra.safetensors", "unexpected")
    no_te = {k: v for k, v in tensors.items() if not k.startswith("conditioner.")}
    save_file(no_te, str(tmp_path / "unet_only.safetensors"))
    _expect_error(tmp_path / "unet_only.safetensors", "no text encoders")


# ---------------------------------------------------------------------------------------------------------
# (d) VAE override and diffusers folders
# ---------------------------------------------------------------------------------------------------------


def test_separate_vae_overrides_checkpoint_vae(tmp_path, tiny_base, base_components) -> None:
    vae_file = write_vae(tmp_path / "other_vae.safetensors", seed=9)
    loaded = load_checkpoint(tiny_base, vae_path=vae_file)
    weight = loaded.vae.encoder.conv_in.weight
    assert not torch.equal(weight, base_components.vae.encoder.conv_in.weight)
    assert torch.equal(weight, load_file(str(vae_file))["encoder.conv_in.weight"].float())
    assert torch.equal(loaded.unet.conv_in.weight, base_components.unet.conv_in.weight)

    diffusers_file = tmp_path / "diffusers_vae.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.vae.state_dict().items()}, str(diffusers_file))
    again = load_vae(diffusers_file, dtype=torch.float32)
    assert list(again.config.block_out_channels) == [32, 32, 64, 64]
    for key, value in loaded.vae.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(CheckpointError, match="LoRA.*expected a VAE file"):
        load_vae(lora)


def test_diffusers_folder(tmp_path, base_components) -> None:
    folder = tmp_path / "tiny_sdxl"
    base_components.unet.save_pretrained(folder / "unet")
    base_components.vae.save_pretrained(folder / "vae")
    base_components.text_encoder.save_pretrained(folder / "text_encoder")
    base_components.text_encoder_2.save_pretrained(folder / "text_encoder_2")
    loaded = load_checkpoint(folder)
    assert loaded.info.kind == "sdxl_base" and loaded.info.prediction == "eps"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        reference = getattr(base_components, name).state_dict()
        state = getattr(loaded, name).state_dict()
        assert set(state) == set(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference), name
    (folder / "text_encoder" / "config.json").unlink()
    refiner_like = load_checkpoint(folder, vae_path=folder / "vae")
    assert refiner_like.info.kind == "sdxl_refiner" and refiner_like.text_encoder is None
    with pytest.raises(CheckpointError, match="not an SDXL diffusers folder"):
        load_checkpoint(tmp_path)
