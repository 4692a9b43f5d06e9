"""Tiled VAE encode/decode: tile positions, tile weights, and tiled == untiled for a linear per-pixel "VAE"."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foci.imaging.tiles import (
    edge_ramp,
    tile_starts,
    tile_weights,
    tiled_scale,
    tiled_vae_decode,
    tiled_vae_encode,
)

ENCODE_MIX = torch.tensor([[0.5, -0.25, 0.125], [0.1, 0.2, 0.3], [-1.0, 0.0, 1.0], [0.25, 0.25, 0.25]])
DECODE_MIX = torch.tensor([[0.5, 0.0, -0.5, 1.0], [0.2, 0.2, 0.2, 0.2], [1.0, -1.0, 0.5, 0.0]])


def fake_encode(pixels: torch.Tensor) -> torch.Tensor:
    """Linear and local to each 8×8 block: average-pool, then mix 3 → 4 channels."""
    return torch.einsum("oc,bchw->bohw", ENCODE_MIX, F.avg_pool2d(pixels, 8))


def fake_decode(latent: torch.Tensor) -> torch.Tensor:
    """Linear and local to each latent cell: mix 4 → 3 channels, then nearest 8× upsampling."""
    return F.interpolate(torch.einsum("oc,bchw->bohw", DECODE_MIX, latent), scale_factor=8, mode="nearest")


def test_tile_starts() -> None:
    assert tile_starts(600, 512, 64) == [0, 448]
    assert tile_starts(512, 512, 64) == [0, 448]  # the last tile may be a 64-pixel sliver, as in Fooocus
    assert tile_starts(1024, 1024, 64) == [0, 960]
    assert tile_starts(100, 512, 64) == [0]
    with pytest.raises(ValueError, match="larger than the overlap"):
        tile_starts(100, 64, 64)


def test_edge_ramp_and_tile_weights() -> None:
    assert edge_ramp(6, 3).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3])
    assert edge_ramp(4, 3).tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3])  # the two ramps meet
    assert edge_ramp(3, 2).tolist() == [0.5, 1.0, 0.5]
    assert edge_ramp(5, 0).tolist() == [1.0] * 5
    weights = tile_weights(4, 6, 2)
    assert weights.shape == (4, 6)
    assert weights[0].tolist() == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5, 0.25])
    assert weights[1].tolist() == pytest.approx([0.5, 1, 1, 1, 1, 0.5])


def test_tiled_scale_identity_and_output_size() -> None:
    samples = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    out = tiled_scale(samples, lambda t: t, tile_height=16, tile_width=20, overlap=4, scale=1, out_channels=3)
    torch.testing.assert_close(out, samples, rtol=0, atol=1e-6)
    doubled = tiled_scale(samples, lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), tile_height=16,
                          tile_width=16, overlap=4, scale=2, out_channels=3)
    assert doubled.shape == (2, 3, 74, 106)
    torch.testing.assert_close(doubled, F.interpolate(samples, scale_factor=2, mode="nearest"), rtol=0, atol=1e-6)


def test_tiled_encode_tiles_and_equals_untiled_for_a_linear_vae() -> None:
    pixels = torch.rand(1, 3, 768, 1024, generator=torch.Generator().manual_seed(1))
    shapes: list[tuple[int, int]] = []

    def recording_encode(part: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(part.shape[-2:]))
        return fake_encode(part)

    latent = tiled_vae_encode(pixels, recording_encode)
    assert latent.shape == (1, 4, 96, 128)
    torch.testing.assert_close(latent, fake_encode(pixels), rtol=0, atol=1e-5)
    # 512×512 at rows 0, 448 × columns 0, 448, 896; 256×1024 at rows 0, 192, 384, 576 × columns 0, 960;
    # 1024×256 at row 0 × columns 0, 192, 384, 576, 768, 960.
    assert shapes[:6] == [(512, 512), (512, 512), (512, 128), (320, 512), (320, 512), (320, 128)]
    assert shapes[6:14] == [(256, 1024), (256, 64), (256, 1024), (256, 64), (256, 1024), (256, 64), (192, 1024),
                            (192, 64)]
    assert shapes[14:] == [(768, 256)] * 5 + [(768, 64)]


def test_tiled_decode_equals_untiled_for_a_linear_vae() -> None:
    latent = torch.randn(1, 4, 100, 72, generator=torch.Generator().manual_seed(2))
    shapes: list[tuple[int, int]] = []

    def recording_decode(part: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(part.shape[-2:]))
        return fake_decode(part)

    pixels = tiled_vae_decode(latent, recording_decode)
    assert pixels.shape == (1, 3, 800, 576)
    torch.testing.assert_close(pixels, fake_decode(latent), rtol=0, atol=1e-5)
    assert shapes[0] == (100, 32)  # first tiling: 128 tall × 32 wide, cut by the 100-latent height
    assert max(h for h, _ in shapes) == 100 and (64, 64) in shapes and (32, 72) in shapes


def test_tiled_output_is_a_weighted_average_across_overlaps() -> None:
    # A "model" that returns a constant per tile shows the weights: in the overlap the result blends linearly.
    samples = torch.zeros(1, 1, 1, 12)
    calls = iter([0.0, 12.0, 12.0])
    out = tiled_scale(samples, lambda t: torch.full_like(t, next(calls)), tile_height=8, tile_width=8, overlap=4,
                      scale=1, out_channels=1)
    # Tiles A 0…7 (value 0), B 4…11 and C 8…11 (value 12); feather 4. At columns 4…7 A weighs 4/4…1/4 (its right
    # ramp) and B 1/4…4/4 (its left ramp); the row ramp of the 1-row tiles (1/16) multiplies all alike.
    a_weights = torch.tensor([1.0, 0.75, 0.5, 0.25])
    b_weights = torch.tensor([0.25, 0.5, 0.75, 1.0])
    expected_overlap = (12.0 * b_weights) / (a_weights + b_weights)
    torch.testing.assert_close(out[0, 0, 0, 4:8], expected_overlap)
    assert out[0, 0, 0, :4].tolist() == [0.0] * 4 and out[0, 0, 0, 8:].tolist() == [12.0] * 4
