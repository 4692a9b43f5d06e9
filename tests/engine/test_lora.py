"""LoRA merging: every format on the tiny SDXL model changes exactly the targeted weights by the expected delta,
restores bit-exactly, never accumulates, and refuses files made for another model."""

from __future__ import annotations

import copy
import datetime
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from foci.models.checkpoint import load_checkpoint
from foci.models.lora import (
    LoraError,
    LoraPatcher,
    lora_module_names,
    read_lora_file,
    unet_ldm_names,
)

Q1 = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # ldm input_blocks.4.1…, 128×128
K2 = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # 128×192 (cross attention)
CONV = "down_blocks.0.resnets.0.conv1"  # ldm input_blocks.1.0.in_layers.2, 64×64×3×3
KOHYA_Q1 = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
KOHYA_CONV = "lora_unet_input_blocks_1_0_in_layers_2"


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def originals(model) -> dict[tuple[str, str], torch.Tensor]:
    return _snapshot(model)


@pytest.fixture
def patcher(model, originals):
    patcher = LoraPatcher(model.unet, model.text_encoder, model.text_encoder_2)
    yield patcher
    patcher.restore()
    assert _changed(model, originals) == set()  # every test leaves the model bit-exactly as loaded


def _components(model) -> dict[str, torch.nn.Module]:
    return {"unet": model.unet, "text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}


def _snapshot(model) -> dict[tuple[str, str], torch.Tensor]:
    return {
        (component, name): p.detach().clone()
        for component, module in _components(model).items()
        for name, p in module.named_parameters()
    }


def _changed(model, snapshot) -> set[tuple[str, str]]:
    return {
        (component, name)
        for component, module in _components(model).items()
        for name, p in module.named_parameters()
        if not torch.equal(p, snapshot[component, name])
    }


def _param(model, component: str, name: str) -> torch.Tensor:
    return _components(model)[component].get_parameter(name)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _kohya(base: str, up: torch.Tensor, down: torch.Tensor, alpha: float | None = None) -> dict[str, torch.Tensor]:
    tensors = {f"{base}.lora_up.weight": up, f"{base}.lora_down.weight": down}
    if alpha is not None:
        tensors[f"{base}.alpha"] = torch.tensor(alpha)
    return tensors


# ---------------------------------------------------------------------------------------------------------
# Name maps
# ---------------------------------------------------------------------------------------------------------


def test_unet_name_map_covers_every_linear_and_conv(model) -> None:
    ldm = unet_ldm_names(model.unet)
    assert set(ldm.values()) == {name for name, _ in model.unet.named_parameters()}
    assert ldm["input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"] == f"{Q1}.weight"
    assert ldm["label_emb.0.0.weight"] == "add_embedding.linear_1.weight"
    assert ldm["middle_block.1.proj_in.weight"] == "mid_block.attentions.0.proj_in.weight"
    assert ldm["output_blocks.2.2.conv.bias"] == "up_blocks.0.upsamplers.0.conv.bias"
    assert ldm["input_blocks.1.0.in_layers.2.weight"] == f"{CONV}.weight"
    names = lora_module_names(model.unet)
    by_target: dict[str, set[str]] = {}
    for name, (component, path) in names.items():
        assert component == "unet"
        by_target.setdefault(path, set()).add(name)
    layers = [
        path for path, module in model.unet.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    assert len(layers) > 100
    for path in layers:
        accepted = by_target[path]
        kohya = {n for n in accepted if n.startswith("lora_unet_")}
        assert f"lora_unet_{path.replace('.', '_')}" in kohya
        assert len(kohya) == 2, (path, kohya)  # an ldm-named and a diffusers-named kohya key
        assert f"unet.{path}" in accepted and any(n.startswith("diffusion_model.") for n in accepted)
    assert names["unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out"] == (
        "unet",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
    )
    assert names["lora_unet_label_emb_0_0"] == ("unet", "add_embedding.linear_1")
    assert names["lora_unet_middle_block_1_transformer_blocks_0_ff_net_2"] == (
        "unet",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    )


def test_text_encoder_names_for_base_and_refiner(model) -> None:
    names = lora_module_names(None, model.text_encoder, model.text_encoder_2)
    q_te1 = ("text_encoder", "encoder.layers.0.self_attn.q_proj")  # transformers 5: no text_model level
    assert names["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == q_te1
    assert names["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"] == q_te1
    fc2 = ("text_encoder_2", "text_model.encoder.layers.1.mlp.fc2")
    assert names["lora_te2_text_model_encoder_layers_1_mlp_fc2"] == fc2
    assert names["text_encoder_2.text_model.encoder.layers.1.mlp.fc2"] == fc2
    assert names["lora_te2_text_projection"] == ("text_encoder_2", "text_projection")
    assert not any(n.startswith("lora_te_") for n in names)
    refiner = lora_module_names(None, None, model.text_encoder_2)  # CLIP-G alone answers to lora_te_
    assert refiner["lora_te_text_model_encoder_layers_1_mlp_fc2"] == fc2
    assert not any(n.startswith(("lora_te1_", "lora_te2_")) for n in refiner)


# ---------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------


def test_kohya_lora_with_alpha_changes_exactly_the_target(model, originals, patcher, tmp_path) -> None:
    up, down = _rand(128, 4, seed=1), _rand(4, 128, seed=2)
    path = _save(tmp_path / "a.safetensors", _kohya(KOHYA_Q1, up, down, alpha=2.0))
    (report,) = patcher.apply([(path, 0.8)])
    assert (report.name, report.weight, report.matched, report.unmatched, report.skipped) == (
        "a.safetensors",
        0.8,
        1,
        [],
        None,
    )
    assert report.targets == {"unet": 1}
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}
    expected = originals["unet", f"{Q1}.weight"] + (0.8 * (2.0 / 4)) * (up @ down)
    assert torch.equal(_param(model, "unet", f"{Q1}.weight"), expected)
    assert patcher.active == [("a.safetensors", 0.8)]


def test_alpha_scaling_and_no_alpha(model, originals, patcher, tmp_path) -> None:
    up, down = _rand(128, 8, seed=3), _rand(8, 128, seed=4)
    original = originals["unet", f"{Q1}.weight"]
    deltas = []
    for alpha in (8.0, 2.0, None):
        path = _save(tmp_path / f"alpha-{alpha}.safetensors", _kohya(KOHYA_Q1, up, down, alpha))
        patcher.apply([(path, 1.0)])
        deltas.append(_param(model, "unet", f"{Q1}.weight") - original)
    torch.testing.assert_close(deltas[0], up @ down, rtol=0, atol=2e-7)  # alpha = rank: scale = weight
    torch.testing.assert_close(deltas[1], 0.25 * (up @ down), rtol=0, atol=2e-7)
    torch.testing.assert_close(deltas[2], deltas[0], rtol=0, atol=0)  # no alpha: scale = weight


def test_ldm_and_diffusers_kohya_names_target_the_same_parameter(model, originals, patcher, tmp_path) -> None:
    up, down = _rand(128, 4, seed=5), _rand(4, 128, seed=6)
    diffusers_name = f"lora_unet_{Q1.replace('.', '_')}"
    results = []
    for base in (KOHYA_Q1, diffusers_name):
        path = _save(tmp_path / f"{base[:20]}.safetensors", _kohya(base, up, down, alpha=4.0))
        (report,) = patcher.apply([(path, 1.0)])
        assert report.matched == 1 and _changed(model, originals) == {("unet", f"{Q1}.weight")}
        results.append(_param(model, "unet", f"{Q1}.weight").clone())
    assert torch.equal(results[0], results[1])


def test_locon_conv_3x3_down_1x1_up_and_mid(model, originals, patcher, tmp_path) -> None:
    up, down = _rand(64, 4, 1, 1, seed=7), _rand(4, 64, 3, 3, seed=8)
    path = _save(tmp_path / "locon.safetensors", _kohya(KOHYA_CONV, up, down, alpha=1.0))
    patcher.apply([(path, 1.0)])
    original = originals["unet", f"{CONV}.weight"]
    assert _changed(model, originals) == {("unet", f"{CONV}.weight")}
    expected = original + 0.25 * (up.flatten(1) @ down.flatten(1)).view(64, 64, 3, 3)
    assert torch.equal(_param(model, "unet", f"{CONV}.weight"), expected)
    # Tucker form: 1x1 down, 3x3 mid, 1x1 up. The merged kernel must equal the three convolutions in a row.
    down1, mid = _rand(4, 64, 1, 1, seed=9), _rand(4, 4, 3, 3, seed=10)
    tensors = _kohya(KOHYA_CONV, up, down1, alpha=2.0) | {f"{KOHYA_CONV}.lora_mid.weight": mid}
    patcher.apply([(_save(tmp_path / "tucker.safetensors", tensors), 1.5)])
    delta = _param(model, "unet", f"{CONV}.weight") - original
    x = _rand(1, 64, 6, 6, seed=11)
    chained = F.conv2d(F.conv2d(F.conv2d(x, down1), mid, padding=1), up) * (1.5 * 2.0 / 4)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), chained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("up_key", "down_key", "component", "target"),
    [
        (f"unet.{Q1}.lora.up.weight", f"unet.{Q1}.lora.down.weight", "unet", Q1),
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
            "unet",
            Q1,
        ),
        (f"unet.{Q1}.lora_B.weight", f"unet.{Q1}.lora_A.weight", "unet", Q1),
        (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
            "text_encoder",
            "encoder.layers.0.self_attn.q_proj",
        ),
        (
            "text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight",
            "text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.lora_A.weight",
            "text_encoder_2",
            "text_model.encoder.layers.1.self_attn.v_proj",
        ),
    ],
)
def test_diffusers_peft_and_transformers_formats(
    model, originals, patcher, tmp_path, up_key, down_key, component, target
) -> None:
    weight = _param(model, component, f"{target}.weight")
    up, down = _rand(weight.shape[0], 2, seed=12), _rand(2, weight.shape[1], seed=13)
    path = _save(tmp_path / "diffusers.safetensors", {up_key: up, down_key: down})
    (report,) = patcher.apply([(path, 0.5)])
    assert report.targets == {component: 1} and report.unmatched == []
    assert _changed(model, originals) == {(component, f"{target}.weight")}
    assert torch.equal(weight, originals[component, f"{target}.weight"] + 0.5 * (up @ down))


def test_loha_plain_and_cp(model, originals, patcher, tmp_path) -> None:
    w1a, w1b, w2a, w2b = _rand(128, 4, seed=14), _rand(4, 128, seed=15), _rand(128, 4, seed=16), _rand(4, 128, seed=17)
    base = KOHYA_Q1
    tensors = {
        f"{base}.hada_w1_a": w1a,
        f"{base}.hada_w1_b": w1b,
        f"{base}.hada_w2_a": w2a,
        f"{base}.hada_w2_b": w2b,
        f"{base}.alpha": torch.tensor(2.0),
    }
    patcher.apply([(_save(tmp_path / "loha.safetensors", tensors), 0.7)])
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}
    delta = _param(model, "unet", f"{Q1}.weight") - originals["unet", f"{Q1}.weight"]
    torch.testing.assert_close(delta, (w1a @ w1b) * (w2a @ w2b) * (0.7 * 2.0 / 4), rtol=1e-5, atol=1e-7)
    # CP form on a 3x3 conv: w1_a/w2_a are [rank, out], w1_b/w2_b [rank, in], t1/t2 [rank, rank, 3, 3].
    parts = {
        name: _rand(*shape, seed=20 + i)
        for i, (name, shape) in enumerate(
            [
                ("w1_a", (3, 64)),
                ("w1_b", (3, 64)),
                ("w2_a", (3, 64)),
                ("w2_b", (3, 64)),
                ("t1", (3, 3, 3, 3)),
                ("t2", (3, 3, 3, 3)),
            ]
        )
    }
    tensors = {f"{KOHYA_CONV}.hada_{k}": v for k, v in parts.items()}
    patcher.apply([(_save(tmp_path / "loha_cp.safetensors", tensors), 1.0)])
    assert _changed(model, originals) == {("unet", f"{CONV}.weight")}

    def factor(a: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(64, 64, 3, 3)
        for h in range(3):
            for w in range(3):
                out[:, :, h, w] = a.T @ t[:, :, h, w] @ b
        return out

    expected = factor(parts["w1_a"], parts["t1"], parts["w1_b"]) * factor(parts["w2_a"], parts["t2"], parts["w2_b"])
    delta = _param(model, "unet", f"{CONV}.weight") - originals["unet", f"{CONV}.weight"]
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7)


def _kron_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Kronecker product written out block by block (independent of torch.kron)."""
    rows = [torch.cat([w1[i, j] * w2 for j in range(w1.shape[1])], dim=1) for i in range(w1.shape[0])]
    return torch.cat(rows, dim=0)


def test_lokr_full_and_decomposed(model, originals, patcher, tmp_path) -> None:
    w1, w2a, w2b = _rand(8, 8, seed=30), _rand(16, 2, seed=31), _rand(2, 16, seed=32)
    tensors = {
        f"{KOHYA_Q1}.lokr_w1": w1,
        f"{KOHYA_Q1}.lokr_w2_a": w2a,
        f"{KOHYA_Q1}.lokr_w2_b": w2b,
        f"{KOHYA_Q1}.alpha": torch.tensor(1.0),
    }
    patcher.apply([(_save(tmp_path / "lokr.safetensors", tensors), 2.0)])
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}
    delta = _param(model, "unet", f"{Q1}.weight") - originals["unet", f"{Q1}.weight"]
    torch.testing.assert_close(delta, _kron_blocks(w1, w2a @ w2b) * (2.0 * 1.0 / 2), rtol=1e-5, atol=1e-7)
    # Both factors full: alpha is ignored (no rank). On a conv the small factor is broadcast over the kernel.
    w1, w2 = _rand(4, 2, seed=33), _rand(16, 32, 3, 3, seed=34)
    tensors = {f"{KOHYA_CONV}.lokr_w1": w1, f"{KOHYA_CONV}.lokr_w2": w2, f"{KOHYA_CONV}.alpha": torch.tensor(5.0)}
    patcher.apply([(_save(tmp_path / "lokr_conv.safetensors", tensors), 1.0)])
    delta = _param(model, "unet", f"{CONV}.weight") - originals["unet", f"{CONV}.weight"]
    expected = torch.stack(
        [torch.stack([_kron_blocks(w1, w2[:, :, h, w]) for w in range(3)], -1) for h in range(3)], -2
    )
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)


def test_glora_current_and_first_layouts(model, originals, patcher, tmp_path) -> None:
    original = originals["unet", f"{K2}.weight"]  # 128 out × 192 in
    a1, a2, b1, b2 = _rand(192, 4, seed=40), _rand(4, 192, seed=41), _rand(128, 4, seed=42), _rand(4, 192, seed=43)
    names = ("a1", "a2", "b1", "b2")
    base = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    tensors = {f"{base}.{n}.weight": t for n, t in zip(names, (a1, a2, b1, b2), strict=True)} | {
        f"{base}.alpha": torch.tensor(2.0)
    }
    patcher.apply([(_save(tmp_path / "glora.safetensors", tensors), 1.0)])
    delta = _param(model, "unet", f"{K2}.weight") - original
    torch.testing.assert_close(delta, (original @ a1 @ a2 + b1 @ b2) * 0.5, rtol=1e-4, atol=1e-7)
    # First LyCORIS release (square weights only): a1 [r, in], a2 [out, r], b1 [r, in], b2 [out, r].
    original = originals["unet", f"{Q1}.weight"]
    a1, a2, b1, b2 = _rand(4, 128, seed=44), _rand(128, 4, seed=45), _rand(4, 128, seed=46), _rand(128, 4, seed=47)
    tensors = {f"{KOHYA_Q1}.{n}.weight": t for n, t in zip(names, (a1, a2, b1, b2), strict=True)}
    patcher.apply([(_save(tmp_path / "glora_old.safetensors", tensors), 0.5)])
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}
    delta = _param(model, "unet", f"{Q1}.weight") - original
    torch.testing.assert_close(delta, (b2 @ b1 + original @ a2 @ a1) * 0.5, rtol=1e-4, atol=1e-7)
    # Current layout on a 3x3 conv: a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in, 3, 3]; W·A per kernel tap.
    original = originals["unet", f"{CONV}.weight"]
    a1, a2, b1, b2 = _rand(64, 2, seed=48), _rand(2, 64, seed=49), _rand(64, 2, seed=50), _rand(2, 64, 3, 3, seed=51)
    tensors = {f"{KOHYA_CONV}.{n}.weight": t for n, t in zip(names, (a1, a2, b1, b2), strict=True)}
    patcher.apply([(_save(tmp_path / "glora_conv.safetensors", tensors), 1.0)])
    delta = _param(model, "unet", f"{CONV}.weight") - original
    expected = torch.stack(
        [torch.stack([original[:, :, h, w] @ a1 @ a2 for w in range(3)], -1) for h in range(3)], -2
    ) + (b1 @ b2.flatten(1)).view(64, 64, 3, 3)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_full_diffs_and_norms(model, originals, patcher, tmp_path) -> None:
    norm = "down_blocks.1.attentions.0.norm"  # ldm input_blocks.4.1.norm (GroupNorm)
    diff, diff_b = _rand(128, 128, seed=50), _rand(64, seed=51)
    w_norm, b_norm = _rand(128, seed=52), _rand(128, seed=53)
    tensors = {
        f"{KOHYA_Q1}.diff": diff,
        f"{KOHYA_CONV}.diff_b": diff_b,
        "lora_unet_input_blocks_4_1_norm.w_norm": w_norm,
        "lora_unet_input_blocks_4_1_norm.b_norm": b_norm,
    }
    (report,) = patcher.apply([(_save(tmp_path / "diff.safetensors", tensors), 0.3)])
    assert report.matched == 4 and report.targets == {"unet": 4}
    expected = {
        f"{Q1}.weight": diff,
        f"{CONV}.bias": diff_b,
        f"{norm}.weight": w_norm,
        f"{norm}.bias": b_norm,
    }
    assert _changed(model, originals) == {("unet", name) for name in expected}
    for name, value in expected.items():
        assert torch.equal(_param(model, "unet", name), originals["unet", name] + 0.3 * value)


def test_fooocus_uint8_patch(model, originals, patcher, tmp_path) -> None:
    generator = torch.Generator().manual_seed(60)
    u8_w = torch.randint(0, 256, (64, 4, 3, 3), dtype=torch.uint8, generator=generator)
    u8_b = torch.randint(0, 256, (64,), dtype=torch.uint8, generator=generator)
    patch = {
        "diffusion_model.input_blocks.0.0.weight": (u8_w, torch.tensor(-0.02), torch.tensor(0.03)),
        "diffusion_model.input_blocks.0.0.bias": (u8_b, -0.5, 0.25),
    }
    path = tmp_path / "inpaint_v26.fooocus.patch"
    torch.save(patch, path)
    state = read_lora_file(path)
    assert set(state) == set(patch) and state["diffusion_model.input_blocks.0.0.bias"][1].dtype == torch.float32
    (report,) = patcher.apply([], unet_only=[(path, 1.0)])
    assert report.targets == {"unet": 2}
    assert _changed(model, originals) == {("unet", "conv_in.weight"), ("unet", "conv_in.bias")}
    w = u8_w.float() / 255.0 * (0.03 - -0.02) + -0.02
    b = u8_b.float() / 255.0 * (0.25 - -0.5) + -0.5
    torch.testing.assert_close(
        _param(model, "unet", "conv_in.weight"), originals["unet", "conv_in.weight"] + w, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(
        _param(model, "unet", "conv_in.bias"), originals["unet", "conv_in.bias"] + b, rtol=0, atol=1e-7
    )


# ---------------------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------------------


def _mixed_file(path: Path, seed: int) -> Path:
    tensors = {}
    tensors |= _kohya(
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        _rand(64, 2, seed=seed),
        _rand(2, 64, seed=seed + 1),
        1.0,
    )
    tensors |= _kohya(
        "lora_te2_text_model_encoder_layers_1_mlp_fc1", _rand(512, 2, seed=seed + 2), _rand(2, 128, seed=seed + 3), 1.0
    )
    tensors |= _kohya("lora_te2_text_projection", _rand(64, 2, seed=seed + 4), _rand(2, 128, seed=seed + 5), 1.0)
    tensors |= _kohya(KOHYA_Q1, _rand(128, 2, seed=seed + 6), _rand(2, 128, seed=seed + 7), 1.0)
    return _save(path, tensors)


MIXED_TARGETS = {
    ("text_encoder", "encoder.layers.0.self_attn.q_proj.weight"),
    ("text_encoder_2", "text_model.encoder.layers.1.mlp.fc1.weight"),
    ("text_encoder_2", "text_projection.weight"),
    ("unet", f"{Q1}.weight"),
}


def test_mixed_te1_te2_unet_file_and_unet_only(model, originals, patcher, tmp_path) -> None:
    path = _mixed_file(tmp_path / "mixed.safetensors", seed=70)
    (report,) = patcher.apply([(path, 1.0)])
    assert report.targets == {"text_encoder": 1, "text_encoder_2": 2, "unet": 1} and report.matched == 4
    assert _changed(model, originals) == MIXED_TARGETS
    (report,) = patcher.apply([], unet_only=[(path, 1.0)])
    assert report.targets == {"unet": 1} and report.unmatched == []
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}


def test_restore_is_bit_exact_and_reapply_does_not_accumulate(model, originals, patcher, tmp_path) -> None:
    a = _mixed_file(tmp_path / "a.safetensors", seed=80)
    b = _mixed_file(tmp_path / "b.safetensors", seed=90)
    patcher.apply([(a, 1.0)])
    after_a = _snapshot(model)
    patcher.apply([(b, 0.5)])
    after_b = _snapshot(model)
    patcher.restore()
    assert _changed(model, originals) == set() and patcher.active == []
    patcher.apply([(b, 0.5)])
    assert _changed(model, after_b) == set()  # B alone equals A-then-B: nothing of A left
    patcher.apply([(a, 1.0)])
    patcher.apply([(a, 1.0)])
    assert _changed(model, after_a) == set()  # applying the same set twice does not double it


def test_several_files_sum_in_float32_and_cast_once(model, tmp_path) -> None:
    unet = copy.deepcopy(model.unet).to(torch.bfloat16)
    original = unet.get_parameter(f"{Q1}.weight").detach().clone()
    ups = [_rand(128, 2, seed=100 + i) for i in range(2)]
    downs = [_rand(2, 128, seed=110 + i) for i in range(2)]
    files = [_save(tmp_path / f"{i}.safetensors", _kohya(KOHYA_Q1, ups[i], downs[i])) for i in range(2)]
    patcher = LoraPatcher(unet)
    with torch.inference_mode():  # the engine may (re)apply inside inference mode
        patcher.apply([(files[0], 0.7), (files[1], -1.3)])
    expected = (original.float() + 0.7 * (ups[0] @ downs[0]) + -1.3 * (ups[1] @ downs[1])).to(torch.bfloat16)
    parameter = unet.get_parameter(f"{Q1}.weight")
    assert parameter.dtype == torch.bfloat16 and torch.equal(parameter, expected)
    assert patcher.active == [("0.safetensors", 0.7), ("1.safetensors", -1.3)]
    patcher.restore()
    assert torch.equal(unet.get_parameter(f"{Q1}.weight"), original)


def test_other_model_family_is_refused_with_a_warning(model, originals, patcher, tmp_path, caplog) -> None:
    tensors = {}
    for i in range(5):  # SD1.5 names: down_blocks.0 has attentions there, not in SDXL
        tensors |= _kohya(
            f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn{i}_to_q",
            _rand(4, 2, seed=i),
            _rand(2, 4, seed=i),
            1.0,
        )
    tensors |= _kohya(KOHYA_Q1, _rand(128, 2, seed=120), _rand(2, 128, seed=121))
    path = _save(tmp_path / "sd15.safetensors", tensors)
    with caplog.at_level(logging.WARNING, logger="foci.models.lora"):
        (report,) = patcher.apply([(path, 1.0)])
    assert report.skipped == "model mismatch" and len(report.unmatched) == 15 and report.matched == 0
    assert "sd15.safetensors" in caplog.text and "15 keys" in caplog.text
    assert _changed(model, originals) == set() and patcher.active == []
    # At most 12 unmatched keys: merged, the unmatched ones reported.
    few = {
        k: v
        for k, v in tensors.items()
        if not k.startswith(
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn0",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1",
            )
        )
    }
    (report,) = patcher.apply([(_save(tmp_path / "few.safetensors", few), 1.0)])
    assert report.skipped is None and report.matched == 1 and len(report.unmatched) == 9
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}


def test_weight_zero_is_skipped_unread(model, originals, patcher, tmp_path) -> None:
    (report,) = patcher.apply([(tmp_path / "does-not-exist.safetensors", 0.0)])
    assert report.skipped == "weight 0" and report.matched == 0
    assert _changed(model, originals) == set() and patcher.active == []


def test_misfitting_delta_is_reported_and_the_rest_merged(model, originals, patcher, tmp_path, caplog) -> None:
    tensors = _kohya(KOHYA_Q1, _rand(128, 2, seed=130), _rand(2, 128, seed=131))
    tensors |= _kohya(
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k", _rand(96, 2, seed=132), _rand(2, 128, seed=133)
    )
    with caplog.at_level(logging.WARNING, logger="foci.models.lora"):
        (report,) = patcher.apply([(_save(tmp_path / "bad-shape.safetensors", tensors), 1.0)])
    assert report.matched == 1 and sorted(report.mismatched) == [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_up.weight",
    ]
    assert "does not fit" in caplog.text
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}


def test_pickle_lora_and_bad_files(model, originals, patcher, tmp_path) -> None:
    up, down = _rand(128, 2, seed=140), _rand(2, 128, seed=141)
    pickled = tmp_path / "lora.pt"
    torch.save({"state_dict": _kohya(KOHYA_Q1, up, down)}, pickled)
    patcher.apply([(pickled, 1.0)])
    after = _snapshot(model)
    assert _changed(model, originals) == {("unet", f"{Q1}.weight")}
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": torch.zeros(1), "when": datetime.date(2024, 1, 1)}, unsafe)  # a global: refused
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path, message in [
        (garbage, "garbage.safetensors"),
        (unsafe, "unsafe.pt"),
        (empty, "empty"),
        (tmp_path / "missing.safetensors", "not found"),
    ]:
        with pytest.raises(LoraError, match=message):
            patcher.apply([(path, 1.0)])
        assert _changed(model, after) == set() and patcher.active == [("lora.pt", 1.0)]  # left as it was
