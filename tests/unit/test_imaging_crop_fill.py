"""Shape-ceil rules, the respective-field crop, Vary/Upscale sizing and fooocus_fill (§2.12.3–5, §2.13)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from foci.imaging.crop import (
    CropBox,
    grow_box,
    initial_box,
    plan_upscale,
    prepare_inpaint_crop,
    resize_upscaled,
    respective_field_box,
    set_image_shape_ceil,
    shape_ceil,
    size_for_shape_ceil,
    uov_strength,
    vary_image,
    vary_shape_ceil,
)
from foci.imaging.fill import FILL_PASSES, box_blur, fooocus_fill

# ----------------------------------------------------------------------------------------------------- shape ceil


def test_shape_ceil() -> None:
    assert shape_ceil(1152, 896) == 1024  # sqrt(1032192) = 1015.97 → 16 · 64
    assert shape_ceil(1024, 1024) == 1024
    assert shape_ceil(1025, 1024) == 1088
    assert shape_ceil(1, 1) == 64


def test_size_for_shape_ceil_rounds_half_to_even() -> None:
    # 300×200 has shape ceil 256 → k = 4: 300·4/64 = 18.75 → 19 → 1216; 200·4/64 = 12.5 → 12 (half to even) → 768.
    assert size_for_shape_ceil(300, 200, 1024) == (1216, 768)
    assert shape_ceil(1216, 768) == 1024
    assert size_for_shape_ceil(1152, 896, 1024) == (1152, 896)  # already there: unchanged, even off-grid
    # shape ceil 3520 → k = 2048/3520: 4000k/64 = 36.36 → 2304, 3000k/64 = 27.27 → 1728 (shape ceil 2048).
    assert size_for_shape_ceil(4000, 3000, 2048) == (2304, 1728)


def test_set_image_shape_ceil_resizes_only_when_needed() -> None:
    image = np.zeros((300, 200, 3), dtype=np.uint8)
    assert set_image_shape_ceil(image, 1024).shape == (1216, 768, 3)
    same = np.zeros((1000, 1000, 3), dtype=np.uint8)
    assert set_image_shape_ceil(same, 1024) is same


# ----------------------------------------------------------------------------------------------------- crop box


def test_initial_box_is_the_1_15_square_around_the_mask() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[40:50, 30:60] = 1  # any value > 0 counts
    # rows 40…49: centre 44, half 4; columns 30…59: centre 44, half 14 → int(14 · 1.15) = 16.
    assert initial_box(mask) == CropBox(28, 61, 28, 61)
    assert respective_field_box(mask, 0.0) == CropBox(28, 61, 28, 61)
    with pytest.raises(ValueError, match="empty"):
        initial_box(np.zeros((4, 4), dtype=np.uint8))


def test_grow_box_alternates_sides_one_pixel_each() -> None:
    # 33×33 → columns first (not shorter), then rows, … until both sides ≥ 50: 9 rounds each → 51×51.
    assert grow_box(CropBox(28, 61, 28, 61), 100, 100, 0.5) == CropBox(19, 70, 19, 70)
    assert grow_box(CropBox(28, 61, 28, 61), 100, 100, 1.0) == CropBox(0, 100, 0, 100)
    with pytest.raises(ValueError, match="0…1"):
        grow_box(CropBox(0, 1, 0, 1), 10, 10, 1.5)


def test_grow_box_clamps_and_hands_growth_to_the_other_side() -> None:
    mask = np.zeros((40, 100), dtype=np.uint8)
    mask[0, 0] = 255
    # Needs ≥ 20 rows and ≥ 50 columns; rows stop at the image's 40, then only columns grow, to exactly 50.
    assert respective_field_box(mask, 0.5) == CropBox(0, 40, 0, 50)
    tall = np.zeros((100, 10), dtype=np.uint8)
    tall[99, 9] = 255
    assert respective_field_box(tall, 0.618) == CropBox(38, 100, 0, 10)  # 62 rows ≥ 61.8; width spans at once


def test_prepare_inpaint_crop_super_resolves_small_crops_and_binarises_the_mask() -> None:
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    image[:, :32] = 200
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[24:40, 24:40] = 255
    calls = []

    def double(crop: np.ndarray) -> np.ndarray:
        calls.append(crop.shape)
        return np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)

    crop = prepare_inpaint_crop(image, mask, field=1.0, use_fill=True, upscale=double)
    assert crop.box == CropBox(0, 64, 0, 64)
    assert calls == [(64, 64, 3)]  # shape ceil 64 < 1024
    assert crop.image.shape == (1024, 1024, 3) and crop.mask.shape == (1024, 1024)
    assert set(np.unique(crop.mask).tolist()) == {0, 255}
    assert crop.mask[400:624, 400:624].min() == 255 and crop.mask[:300].max() == 0
    keep = crop.mask < 127
    assert np.array_equal(crop.fill[keep], crop.image[keep])
    plain = prepare_inpaint_crop(image, mask, field=0.0, use_fill=False, upscale=double)
    assert plain.fill is plain.image and plain.box == initial_box(mask)


# ----------------------------------------------------------------------------------------------------- vary / upscale


def test_vary_clamps_the_shape_ceil_into_1024_2048() -> None:
    assert vary_shape_ceil(512, 512) == 1024
    assert vary_shape_ceil(1152, 896) == 1024
    assert vary_shape_ceil(1536, 1536) == 1536
    assert vary_shape_ceil(4096, 4096) == 2048
    inside = np.zeros((1200, 1300, 3), dtype=np.uint8)
    assert vary_image(inside) is inside  # shape ceil 1280 is inside the range: no resize, even off the 64 grid
    assert vary_image(np.zeros((300, 200, 3), dtype=np.uint8)).shape == (1216, 768, 3)


def test_uov_strengths_and_overwrites() -> None:
    assert uov_strength("Vary (Subtle)") == 0.5
    assert uov_strength("vary (strong)") == 0.85
    assert uov_strength("Upscale (2x)") == 0.382
    assert uov_strength("Vary (Subtle)", overwrite_vary=0.3, overwrite_upscale=0.9) == 0.3
    assert uov_strength("Upscale (1.5x)", overwrite_vary=0.3, overwrite_upscale=0.9) == 0.9
    assert uov_strength("Upscale (1.5x)", overwrite_upscale=-1) == 0.382
    with pytest.raises(ValueError, match="not an Upscale or Variation method"):
        uov_strength("Disabled")


def test_upscale_plan() -> None:
    big = plan_upscale(1000, 900, "Upscale (1.5x)")
    assert (big.factor, big.size, big.shape_ceil, big.to_shape_ceil, big.direct_return) == \
        (1.5, (1500, 1350), 1472, False, False)
    small = plan_upscale(300, 200, "Upscale (2x)")  # 600×400 has shape ceil 512 < 1024
    assert (small.shape_ceil, small.to_shape_ceil, small.direct_return) == (1024, True, False)
    fast = plan_upscale(1000, 900, "Upscale (Fast 2x)")
    assert (fast.factor, fast.direct_return, fast.size) == (2.0, True, (2000, 1800))
    huge = plan_upscale(1500, 1400, "upscale (2x)")  # 3000×2800 → shape ceil 2944 > 2800
    assert (huge.shape_ceil, huge.direct_return) == (2944, True)
    edge = plan_upscale(1400, 1400, "Upscale (2x)")  # exactly 2800 is not above 2800
    assert (edge.shape_ceil, edge.direct_return) == (2816, True)
    below = plan_upscale(1376, 1376, "Upscale (2x)")
    assert (below.shape_ceil, below.direct_return) == (2752, False)


def test_resize_upscaled_follows_the_plan() -> None:
    small = plan_upscale(300, 200, "Upscale (2x)")
    assert resize_upscaled(np.zeros((600, 400, 3), dtype=np.uint8), small).shape == (1216, 768, 3)  # a 2× SR
    four_times = np.zeros((1200, 800, 3), dtype=np.uint8)  # a 4× SR already has shape ceil 1024: kept as is
    assert resize_upscaled(four_times, small) is four_times
    sr_big = np.zeros((4000, 3600, 3), dtype=np.uint8)
    assert resize_upscaled(sr_big, plan_upscale(1000, 900, "Upscale (1.5x)")).shape == (1500, 1350, 3)


# ----------------------------------------------------------------------------------------------------- fill


def _reference_box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Exact mean over the (2r+1)² square, edges replicated, rounded (an odd count never ties)."""
    n = 2 * radius + 1
    padded = np.pad(image.astype(np.int64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    integral = np.pad(padded, ((1, 0), (1, 0), (0, 0))).cumsum(0).cumsum(1)
    sums = integral[n:, n:] - integral[:-n, n:] - integral[n:, :-n] + integral[:-n, :-n]
    return np.floor(sums / (n * n) + 0.5).astype(np.uint8)


@pytest.mark.parametrize("radius", [0, 1, 3, 5, 15, 33, 64])
def test_box_blur_is_the_rounded_mean_of_the_2r_plus_1_square(radius: int) -> None:
    image = np.random.default_rng(radius).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    assert np.array_equal(box_blur(image, radius), _reference_box_blur(image, radius))
    pil = np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(radius))).astype(int)
    assert np.abs(pil - box_blur(image, radius).astype(int)).max() <= 1  # PIL rounds after each 1-D pass


def test_fooocus_fill_matches_the_pass_schedule_and_keeps_known_pixels() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:30, 12:40] = 255
    mask[0, 0] = 127  # ≥ 127 counts as hole
    filled = fooocus_fill(image, mask)
    expected = image.copy()
    keep = mask < 127
    for radius, repeats in FILL_PASSES:
        for _ in range(repeats):
            expected = _reference_box_blur(expected, radius)
            expected[keep] = image[keep]
    assert np.array_equal(filled, expected)
    assert np.array_equal(filled[keep], image[keep])
    assert not np.array_equal(filled[10:30, 12:40], image[10:30, 12:40])


def test_fooocus_fill_spreads_a_uniform_border_colour_exactly() -> None:
    image = np.zeros((30, 30, 3), dtype=np.uint8)
    image[:] = (10, 200, 90)
    image[5:25, 5:25] = (255, 0, 0)  # hidden by the mask
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:25, 5:25] = 255
    filled = fooocus_fill(image, mask)
    assert (filled.reshape(-1, 3) == (10, 200, 90)).all()
    with pytest.raises(ValueError, match="does not match"):
        fooocus_fill(image, mask[:10])
