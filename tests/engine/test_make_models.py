"""``write_tiny_models``: a complete tiny models folder whose auxiliary files fit the tiny checkpoint and load
through the real loaders (inpaint head, .fooocus.patch merge, ESRGAN upscaler)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from foci.dev.make_models import INPAINT_PATCHES, PATCH_RANGE, TINY_UPSCALER, write_tiny_models
from foci.files.folders import ModelFolders
from foci.imaging.inpaint_head import load_inpaint_head
from foci.imaging.upscaler import load_upscaler, read_state_dict
from foci.models.checkpoint import UNET_PREFIX, load_checkpoint, read_tensor_shapes
from foci.models.lora import LoraPatcher
from foci.models.lora_formats import group_patches, read_lora_file


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("tiny-models")
    return root, write_tiny_models(root)


def test_files_are_where_foci_looks_for_them(models) -> None:
    root, written = models
    relative = sorted(path.relative_to(root).as_posix() for path in written.values())
    assert relative == [
        "checkpoints/tiny.safetensors",
        "inpaint/fooocus_inpaint_head.pth",
        "inpaint/inpaint.fooocus.patch",
        "inpaint/inpaint_v25.fooocus.patch",
        "inpaint/inpaint_v26.fooocus.patch",
        "upscale_models/fooocus_upscaler_s409985e5.bin",
    ]
    folders = ModelFolders.default(root)
    assert folders.find("checkpoints", "tiny.safetensors") == written["checkpoint"]
    assert folders.find("upscale_models", "fooocus_upscaler_s409985e5.bin") == written["upscaler"]
    for name in (*INPAINT_PATCHES.values(), "fooocus_inpaint_head.pth"):
        assert folders.find("inpaint", name) is not None
    assert not list(root.rglob("*.partial"))


def test_inpaint_head_fits_the_tiny_unet(models) -> None:
    _, written = models
    conv_in = read_tensor_shapes(written["checkpoint"])[UNET_PREFIX + "input_blocks.0.0.weight"]
    head = load_inpaint_head(written["inpaint_head"], unet_channels=conv_in[0])
    assert head.channels == conv_in[0] == 64
    assert head.features(torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 8, 8)).shape == (1, 64, 8, 8)


def test_inpaint_patches_are_fooocus_patches_for_every_unet_tensor(models) -> None:
    _, written = models
    unet_shapes = {key.removeprefix("model."): shape for key, shape in read_tensor_shapes(written["checkpoint"]).items()
                   if key.startswith(UNET_PREFIX)}
    digests = set()
    for engine in INPAINT_PATCHES:
        state = read_lora_file(written[f"inpaint_patch_{engine}"])
        assert set(state) == set(unet_shapes)
        patches, leftovers = group_patches(state)
        assert leftovers == [] and all(p.kind == "fooocus" for group in patches.values() for p in group)
        key = "diffusion_model.input_blocks.0.0.weight"
        quantised, low, high = state[key]
        assert quantised.dtype == torch.uint8 and tuple(quantised.shape) == unet_shapes[key]
        assert (float(low), float(high)) == pytest.approx((-PATCH_RANGE, PATCH_RANGE))
        digests.add(hashlib.sha256(quantised.numpy().tobytes()).hexdigest())
    assert len(digests) == 3  # three different engines


def test_inpaint_patch_merges_into_the_tiny_checkpoint(models) -> None:
    _, written = models
    model = load_checkpoint(written["checkpoint"])
    before = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    patcher = LoraPatcher(model.unet)
    (report,) = patcher.apply([], unet_only=[(written["inpaint_patch_v2.6"], 1.0)])
    assert report.targets == {"unet": len(before)}
    change = max(float((p - before[name]).abs().max()) for name, p in model.unet.named_parameters())
    assert 0 < change <= PATCH_RANGE * 1.001
    patcher.restore()
    assert all(torch.equal(p, before[name]) for name, p in model.unet.named_parameters())


def test_upscaler_is_a_4x_rrdbnet_in_fooocus_layout_that_keeps_the_picture(models) -> None:
    _, written = models
    raw = torch.load(written["upscaler"], map_location="cpu", weights_only=True)
    assert "model.1.sub.0.residual_block_1.conv1.0.weight" in raw and "model.10.weight" in raw
    assert "model.1.sub.0.RDB1.conv1.0.weight" in read_state_dict(written["upscaler"])
    upscaler = load_upscaler(written["upscaler"], use_spandrel=False)
    assert upscaler.scale == 4 and upscaler.network.config == TINY_UPSCALER
    y, x = np.mgrid[0:16, 0:20]
    image = np.stack([y * 12, x * 10, (x + y) * 6], axis=2).astype(np.uint8)
    result = upscaler.upscale(image)
    nearest = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    assert result.shape == (64, 80, 3)
    mse = np.mean((result.astype(float) - nearest.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # the same picture, 4× larger


def test_writing_is_deterministic(models, tmp_path) -> None:
    _, first = models
    second = write_tiny_models(tmp_path)
    for name in ("inpaint_head", "inpaint_patch_v1", "upscaler"):
        a = torch.load(first[name], weights_only=True)
        b = torch.load(second[name], weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            left, right = (a[key][0], b[key][0]) if isinstance(a[key], tuple) else (a[key], b[key])
            assert torch.equal(left, right), key
    assert first["checkpoint"].read_bytes() == second["checkpoint"].read_bytes()
