"""The Fooocus inpaint head: replicate-padded bias-free conv, channels from the file, one-line refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from foci.imaging.inpaint_head import InpaintHeadError, load_inpaint_head


def _save(path, weight) -> None:
    torch.save({"head": weight}, path)


def test_head_is_a_replicate_padded_conv(tmp_path) -> None:
    weight = torch.zeros(2, 5, 3, 3)
    weight[0, 0, 0, 0] = 1.0  # output 0 = mask channel at (y−1, x−1), edges replicated
    weight[1, 1:, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # output 1 = weighted sum of the latent's centre
    _save(tmp_path / "fooocus_inpaint_head.pth", weight)
    head = load_inpaint_head(tmp_path / "fooocus_inpaint_head.pth")
    assert head.channels == 2
    mask = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    latent = torch.ones(1, 4, 3, 3)
    out = head.features(mask, latent)
    assert out.shape == (1, 2, 3, 3)
    assert out[0, 0].tolist() == [[0, 0, 1], [0, 0, 1], [3, 3, 4]]
    assert out[0, 1].tolist() == [[10.0] * 3] * 3


def test_head_matches_an_explicit_replicate_convolution(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 5, 3, 3, generator=generator)
    path = tmp_path / "head.safetensors"
    save_file({"head": weight}, str(path))
    head = load_inpaint_head(path, unet_channels=64)
    x = torch.randn(2, 5, 16, 12, generator=generator)
    padded = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
    padded = torch.cat([padded[..., :1], padded, padded[..., -1:]], dim=-1)
    torch.testing.assert_close(head(x), torch.nn.functional.conv2d(padded, weight))


def test_wrong_files_are_refused_with_one_line(tmp_path) -> None:
    _save(tmp_path / "wide.pth", torch.zeros(320, 5, 3, 3))
    with pytest.raises(InpaintHeadError, match="for 320 UNet channels, but this UNet's first block has 64"):
        load_inpaint_head(tmp_path / "wide.pth", unet_channels=64)
    _save(tmp_path / "shape.pth", torch.zeros(320, 4, 3, 3))
    with pytest.raises(InpaintHeadError, match=r"shape \(320, 4, 3, 3\); expected \(C, 5, 3, 3\)"):
        load_inpaint_head(tmp_path / "shape.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InpaintHeadError, match="no 'head' tensor"):
        load_inpaint_head(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(InpaintHeadError, match="not a readable inpaint head") as info:
        load_inpaint_head(tmp_path / "junk.pth")
    assert "\n" not in str(info.value)
    with pytest.raises(InpaintHeadError, match="not found"):
        load_inpaint_head(tmp_path / "absent.pth")
