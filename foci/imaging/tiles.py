"""Tiled application of an image-to-image function, and the tiled VAE encode/decode of Upscale (§2.13, §2.20).

A function is run on overlapping tiles; each tile's output is weighted by a linear ramp of ``round(overlap ·
scale)`` pixels at every tile edge (weight ``(t + 1) / feather`` at distance ``t`` from the edge, the row and column
ramps multiplied) and the weighted outputs are averaged. Tiles start at ``0, tile − overlap, 2·(tile − overlap), …``
and are cut short by the image border. The VAE versions average three tilings (square, wide, tall).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TileFunction = Callable[[torch.Tensor], torch.Tensor]

ENCODE_TILE, ENCODE_OVERLAP = 512, 64
DECODE_TILE, DECODE_OVERLAP = 64, 16
VAE_FACTOR = 8


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one axis of ``size`` pixels."""
    if tile <= overlap:
        raise ValueError(f"tile size {tile} must be larger than the overlap {overlap}")
    return list(range(0, size, tile - overlap))


def edge_ramp(length: int, feather: int) -> torch.Tensor:
    """1-D tile weights: ``(t + 1) / feather`` for the ``t``-th pixel from either end (both ends multiply when they
    meet), 1 in between. ``feather`` ≤ 0 gives all ones."""
    if feather <= 0:
        return torch.ones(length, dtype=torch.float32)
    from_start = torch.arange(length, dtype=torch.float64)
    from_end = from_start.flip(0)
    ramp_start = torch.where(from_start < feather, (from_start + 1) / feather, 1.0)
    ramp_end = torch.where(from_end < feather, (from_end + 1) / feather, 1.0)
    return (ramp_start * ramp_end).float()


def tile_weights(height: int, width: int, feather: int) -> torch.Tensor:
    """``(height, width)`` weights of one tile's output: the row ramp times the column ramp."""
    return edge_ramp(height, feather)[:, None] * edge_ramp(width, feather)[None, :]


def tiled_scale(
    samples: torch.Tensor,
    function: TileFunction,
    *,
    tile_height: int,
    tile_width: int,
    overlap: int,
    scale: float,
    out_channels: int,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """``function`` (which scales by ``scale``) applied tile by tile to ``samples`` ``(B, C, H, W)``; float32
    ``(B, out_channels, round(H·scale), round(W·scale))`` on ``output_device`` (default: that of ``samples``)."""
    device = samples.device if output_device is None else torch.device(output_device)
    batch, _, height, width = samples.shape
    out_height, out_width = round(height * scale), round(width * scale)
    total = torch.zeros((batch, out_channels, out_height, out_width), dtype=torch.float32, device=device)
    weight_sum = torch.zeros((1, 1, out_height, out_width), dtype=torch.float32, device=device)
    feather = round(overlap * scale)
    for y in tile_starts(height, tile_height, overlap):
        for x in tile_starts(width, tile_width, overlap):
            result = function(samples[:, :, y:y + tile_height, x:x + tile_width]).to(device, torch.float32)
            top, left = round(y * scale), round(x * scale)
            rows, columns = min(result.shape[-2], out_height - top), min(result.shape[-1], out_width - left)
            weights = tile_weights(result.shape[-2], result.shape[-1], feather).to(device)[:rows, :columns]
            total[:, :, top:top + rows, left:left + columns] += result[:, :, :rows, :columns] * weights
            weight_sum[:, :, top:top + rows, left:left + columns] += weights
    return total / weight_sum


def tiled_vae_encode(
    pixels: torch.Tensor,
    encode: TileFunction,
    *,
    latent_channels: int = 4,
    tile: int = ENCODE_TILE,
    overlap: int = ENCODE_OVERLAP,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fooocus's tiled encode: ``encode`` (pixels → latent, 8× smaller) on 512×512, 256×1024 and 1024×256 tiles
    (height × width) with a 64-pixel overlap, the three results averaged."""
    tilings = ((tile, tile), (tile // 2, tile * 2), (tile * 2, tile // 2))
    results = [tiled_scale(pixels, encode, tile_height=h, tile_width=w, overlap=overlap, scale=1 / VAE_FACTOR,
                           out_channels=latent_channels, output_device=output_device) for h, w in tilings]
    return (results[0] + results[1] + results[2]) / 3.0


def tiled_vae_decode(
    latent: torch.Tensor,
    decode: TileFunction,
    *,
    out_channels: int = 3,
    tile: int = DECODE_TILE,
    overlap: int = DECODE_OVERLAP,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fooocus's tiled decode: ``decode`` (latent → pixels, 8× larger) on 128×32, 32×128 and 64×64 latent tiles
    (height × width) with a 16-latent overlap, the three results averaged."""
    tilings = ((tile * 2, tile // 2), (tile // 2, tile * 2), (tile, tile))
    results = [tiled_scale(latent, decode, tile_height=h, tile_width=w, overlap=overlap, scale=VAE_FACTOR,
                           out_channels=out_channels, output_device=output_device) for h, w in tilings]
    return (results[0] + results[1] + results[2]) / 3.0
