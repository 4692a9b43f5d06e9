"""The ESRGAN-family upscaler on small random networks: key layouts, scale from the weights, tiling with OOM
fallback, clamping, and one-line refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from foci.imaging.upscaler import (
    RRDBConfig,
    RRDBNet,
    Upscaler,
    UpscalerError,
    load_upscaler,
    read_state_dict,
    to_realesrgan_layout,
)

SMALL = RRDBConfig(in_channels=3, out_channels=3, features=8, growth=4, blocks=2, upsamples=2, unshuffle=1)


def random_network(config: RRDBConfig, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    network = RRDBNet(config).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)  # livelier than the default init, so layout mix-ups show
    return network


def old_layout(state: dict[str, torch.Tensor], upsamples: int, *, fooocus_names: bool = False) -> dict:
    """Real-ESRGAN names → old ESRGAN names (model.0, model.1.sub.N.RDBk.convj.0, model.3, …)."""
    rdb = "residual_block_" if fooocus_names else "RDB"
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    tail = {f"conv_up{n}": 3 * n for n in range(1, upsamples + 1)}
    tail |= {"conv_hr": 3 * upsamples + 2, "conv_last": 3 * upsamples + 4}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.{rdb}{parts[2][3:]}.{parts[3]}.0.{leaf}"] = value
        elif module == "conv_body":
            out[f"model.1.sub.{blocks}.{leaf}"] = value
        elif module == "conv_first":
            out[f"model.0.{leaf}"] = value
        else:
            out[f"model.{tail[module]}.{leaf}"] = value
    return out


def basicsr_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "body":
            out[f"RRDB_trunk.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.{leaf}"] = value
        else:
            out[f"{names.get(module, module)}.{leaf}"] = value
    return out


@pytest.fixture(scope="module")
def network() -> RRDBNet:
    return random_network(SMALL)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)


def _expected(network: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = network(torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]).clamp(0, 1)
    return np.clip(255.0 * out[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("layout", ["realesrgan", "basicsr", "old", "fooocus", "params_ema", "safetensors"])
def test_every_layout_loads_to_the_same_network(layout, network, image, tmp_path) -> None:
    state = {k: v.clone() for k, v in network.state_dict().items()}
    path = tmp_path / "model.pth"
    if layout == "basicsr":
        torch.save(basicsr_layout(state), path)
    elif layout in ("old", "fooocus"):
        torch.save(old_layout(state, 2, fooocus_names=layout == "fooocus"), path)
    elif layout == "params_ema":
        torch.save({"params_ema": state, "params": {}}, path)
    elif layout == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    upscaler = load_upscaler(path, use_spandrel=False)
    assert upscaler.scale == 4 and upscaler.network.config == SMALL
    result = upscaler.upscale(image)
    assert result.shape == (52, 68, 3) and result.dtype == np.uint8
    assert np.array_equal(result, _expected(network, image))


def test_fooocus_key_rename_and_old_layout_mapping(network) -> None:
    old = old_layout(network.state_dict(), 2, fooocus_names=True)
    assert "model.1.sub.0.residual_block_1.conv1.0.weight" in old and "model.10.weight" in old
    assert "model.1.sub.2.weight" in old and "model.3.weight" in old and "model.8.weight" in old
    canonical = to_realesrgan_layout({k.replace("residual_block_", "RDB"): v for k, v in old.items()})
    assert set(canonical) == set(network.state_dict())


def test_scale_and_pixel_unshuffle_are_read_from_the_weights(tmp_path) -> None:
    x2plus = RRDBConfig(in_channels=12, out_channels=3, features=8, growth=4, blocks=1, upsamples=2, unshuffle=2)
    two = random_network(x2plus, seed=1)
    torch.save(two.state_dict(), tmp_path / "x2plus.pth")
    upscaler = load_upscaler(tmp_path / "x2plus.pth", use_spandrel=False)
    assert upscaler.network.config == x2plus and upscaler.scale == 2
    odd = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)  # padded for the unshuffle
    assert upscaler.upscale(odd).shape == (18, 22, 3)
    one_stage = RRDBConfig(in_channels=3, out_channels=3, features=8, growth=4, blocks=1, upsamples=1, unshuffle=1)
    torch.save(old_layout(random_network(one_stage).state_dict(), 1), tmp_path / "old2x.pth")
    assert load_upscaler(tmp_path / "old2x.pth", use_spandrel=False).scale == 2


def test_non_esrgan_and_unreadable_files_are_refused_with_one_line(tmp_path) -> None:
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "unet.pth")
    with pytest.raises(UpscalerError, match=r"unet\.pth: not an ESRGAN-family \(RRDBNet\) upscaler") as info:
        load_upscaler(tmp_path / "unet.pth", use_spandrel=False)
    assert "\n" not in str(info.value)
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(UpscalerError, match="not a readable upscaler file"):
        read_state_dict(tmp_path / "text.bin")
    with (tmp_path / "evil.pth").open("wb") as handle:
        pickle.dump({"weights": print}, handle, protocol=2)  # a global outside the weights-only allow list
    with pytest.raises(UpscalerError, match="not a readable upscaler file"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save({"numbers": [1, 2]}, tmp_path / "empty.pth")
    with pytest.raises(UpscalerError, match="holds no tensors"):
        read_state_dict(tmp_path / "empty.pth")
    with pytest.raises(UpscalerError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_weights_that_do_not_fit_are_refused(network, tmp_path) -> None:
    state = dict(network.state_dict())
    state["body.0.rdb1.conv1x1.weight"] = torch.zeros(4, 8, 1, 1)  # an RRDB "plus" variant
    torch.save(state, tmp_path / "plus.pth")
    with pytest.raises(UpscalerError, match=r"plus\.pth: RRDBNet weights that do not fit the network"):
        load_upscaler(tmp_path / "plus.pth", use_spandrel=False)


class NearestTwice(nn.Module):
    """A 2× "upscaler" that records its tile sizes and runs out of memory above ``limit`` pixels per side."""

    def __init__(self, limit: int, error: type[BaseException] = torch.OutOfMemoryError) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.limit, self.error, self.tiles = limit, error, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 1 GiB")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") * self.weight * 2 - 0.5


def test_tiles_halve_on_out_of_memory_and_output_is_clamped() -> None:
    fake = NearestTwice(limit=200)
    pixels = torch.rand(1, 3, 300, 300, generator=torch.Generator().manual_seed(3))
    out = Upscaler(fake, 2, "fake").upscale_tensor(pixels)
    assert (fake.tiles[0], fake.tiles[1]) == ((300, 300), (256, 256))  # 512 → OOM, 256 → OOM, then 128
    assert all(max(tile) <= 128 for tile in fake.tiles[3:])
    expected = torch.nn.functional.interpolate(pixels * 2 - 0.5, scale_factor=2, mode="nearest").clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert out.min() == 0 and out.max() == 1


def test_out_of_memory_below_the_smallest_tile_and_other_errors_propagate() -> None:
    pixels = torch.rand(1, 3, 300, 300)
    never = NearestTwice(limit=64)
    with pytest.raises(torch.OutOfMemoryError):
        Upscaler(never, 2, "fake").upscale_tensor(pixels)
    assert sorted({max(t) for t in never.tiles}, reverse=True)[:3] == [300, 256, 128]
    broken = NearestTwice(limit=64, error=ValueError)
    with pytest.raises(ValueError):
        Upscaler(broken, 2, "fake").upscale_tensor(pixels)
    assert len(broken.tiles) == 1
