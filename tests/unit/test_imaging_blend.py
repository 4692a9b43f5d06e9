"""Latent mask, feather mask and paste-back (§2.12 steps 6 and 10), with exact numbers and the exactness property."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from foci.imaging.blend import (
    alpha_blend,
    grey_out_masked,
    latent_mask,
    mask_to_tensor,
    paste_back,
    soft_mask,
)
from foci.imaging.crop import CropBox, respective_field_box


def test_grey_out_uses_the_rounded_mask() -> None:
    pixels = torch.full((1, 3, 1, 4), 0.9)
    mask = torch.tensor([[[0.0, 0.5, 0.51, 1.0]]])  # torch rounds half to even: 0.5 → 0 (kept)
    out = grey_out_masked(pixels, mask)
    assert out.shape == (1, 3, 1, 4)
    assert out[0, :, 0].tolist() == [[pytest.approx(0.9), pytest.approx(0.9), 0.5, 0.5]] * 3


def test_latent_mask_marks_every_cell_with_a_masked_pixel() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[17, 30] = 255  # one pixel → latent cell (2, 3)
    mask[63, 0] = 255  # → cell (7, 0)
    cells = latent_mask(mask_to_tensor(mask), 8, 8)
    assert cells.shape == (1, 1, 8, 8)
    assert torch.nonzero(cells[0, 0]).tolist() == [[2, 3], [7, 0]]
    assert set(cells.unique().tolist()) == {0.0, 1.0}


def test_latent_mask_resizes_bilinearly_then_rounds() -> None:
    mask = torch.zeros((1, 4, 4))
    mask[0, 0, 0] = 1.0
    # 4×4 → 16×16 bilinear: the 1-D weights of pixel 0 are 1, 1, .875, .625, .375, .125, 0, …, so only latent
    # cell (0, 0) (output pixels 0…7) holds values that round to 1.
    cells = latent_mask(mask, 2, 2)
    assert cells[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert latent_mask(torch.zeros((2, 16, 16)), 2, 2).sum() == 0
    assert latent_mask(torch.ones((2, 16, 16)), 2, 2).min() == 1


def test_soft_mask_falls_by_8_per_pixel_of_chebyshev_distance() -> None:
    mask = np.zeros((80, 80), dtype=np.uint8)
    mask[40, 40] = 255
    soft = soft_mask(mask)
    assert soft[40, 40] == 255  # 256 clipped
    assert soft[40, 41] == 248 and soft[39, 39] == 248 and soft[40, 42] == 240
    assert soft[40, 40 + 31] == 8 and soft[40 + 32, 40] == 0 and soft[0, 0] == 0
    assert soft[40 - 20, 40 + 5] == 256 - 8 * 20


@pytest.mark.parametrize("seed", range(6))
def test_soft_mask_closed_form_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.where(rng.random((70, 90)) > 0.997, rng.integers(100, 256, (70, 90)), 0).astype(np.uint8)
    mask[0, 0] = 255
    inside = (mask > 127).astype(np.uint8)
    distance = cv2.distanceTransform(1 - inside, cv2.DIST_C, 3)  # Chebyshev distance to the mask
    expected = np.clip(256 - 8 * distance, 0, 255).astype(np.uint8)
    assert np.array_equal(soft_mask(mask), expected)


def test_alpha_blend_truncates() -> None:
    fg = np.array([[[200, 0, 255]]], dtype=np.uint8)
    bg = np.array([[[100, 255, 0]]], dtype=np.uint8)
    assert alpha_blend(fg, bg, np.array([[255]], dtype=np.uint8)).tolist() == [[[200, 0, 255]]]
    assert alpha_blend(fg, bg, np.array([[0]], dtype=np.uint8)).tolist() == [[[100, 255, 0]]]
    w = np.float32(128) / np.float32(255)
    pairs = ((200, 100), (0, 255), (255, 0))
    expected = [int(np.float32(f) * w + np.float32(b) * (np.float32(1) - w)) for f, b in pairs]
    assert alpha_blend(fg, bg, np.array([[128]], dtype=np.uint8)).tolist() == [[expected]]
    assert expected == [150, 126, 128]


@pytest.mark.parametrize("seed", range(8))
def test_paste_back_leaves_everything_outside_mask_and_feather_exactly_unchanged(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    height, width = rng.integers(48, 160, 2)
    original = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        mask[top:top + rng.integers(1, 20), left:left + rng.integers(1, 20)] = rng.integers(128, 256)
    box = respective_field_box(mask, float(rng.choice([0.0, 0.3, 0.618, 1.0])))
    decoded_size = (int(rng.integers(16, 300)), int(rng.integers(16, 300)), 3)  # any size: resized to the box
    decoded = rng.integers(0, 256, decoded_size, dtype=np.uint8)
    feather = soft_mask(mask)
    result = paste_back(original, decoded, box, feather)
    inside = (mask > 127).astype(np.uint8)
    far = cv2.distanceTransform(1 - inside, cv2.DIST_C, 3) >= 32
    assert far.any()
    assert np.array_equal(result[far], original[far])
    assert np.array_equal(result[feather == 0], original[feather == 0])
    changed = np.any(result != original, axis=2)
    assert changed[inside.astype(bool)].any()


def test_paste_back_puts_the_resized_crop_inside_the_mask() -> None:
    original = np.zeros((64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[20:30, 20:30] = 255
    box = CropBox(10, 40, 10, 40)
    decoded = np.full((120, 120, 3), 77, dtype=np.uint8)
    result = paste_back(original, decoded, box, soft_mask(mask))
    assert (result[20:30, 20:30] == 77).all()
    assert result[15, 25].tolist() == [int(np.float32(77) * (np.float32(216) / np.float32(255)))] * 3  # 5 px away
    with pytest.raises(ValueError, match="feather mask"):
        paste_back(original, decoded, box, soft_mask(mask)[:10])
