"""Input image normalisation, mask assembly and outpaint padding (§2.12 steps 1–2), with exact numbers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from foci.imaging.masks import (
    MaskError,
    assemble_mask,
    binarise_uploaded_mask,
    canvas_mask,
    composite_on_white,
    erode_or_dilate,
    has_inpaint_work,
    image_to_rgb,
    mask_image_to_rgb,
    outpaint,
    read_mask,
    read_rgb,
)
from foci.records.image_input import ImageInputError, ImageTooLargeError

# ----------------------------------------------------------------------------------------------------- images


def test_rgba_is_composited_on_white_with_truncation() -> None:
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], dtype=np.uint8)
    out = composite_on_white(rgba)
    a = np.float32(128) / np.float32(255)
    expected_half = [int(np.float32(c) * a + np.float32(255) * (np.float32(1) - a)) for c in (200, 100, 0)]
    assert out.tolist() == [[[200, 100, 0], [255, 255, 255], expected_half]]
    assert expected_half == [227, 177, 126]  # 255·(1 − 128/255) is 126.99… in float32, truncated
    assert image_to_rgb(Image.fromarray(rgba, "RGBA")).tolist() == out.tolist()


def test_grayscale_palette_and_la_inputs_become_rgb() -> None:
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L")
    assert image_to_rgb(gray).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), "LA")
    assert image_to_rgb(la).tolist() == [[[255, 255, 255], [10, 10, 10]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 1
    assert image_to_rgb(palette).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert read_rgb(path)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert read_mask(path)[0, :, 1].tolist() == [0, 1, 128, 255]


def test_exif_rotated_jpeg_is_turned_upright(tmp_path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = read_rgb(path)
    assert upright.shape == (40, 20, 3)
    assert upright[:15].mean() > 240 and upright[25:].mean() < 15  # the white half is now on top


def test_mask_upload_drops_alpha() -> None:
    rgba = np.array([[[255, 255, 255, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    assert mask_image_to_rgb(Image.fromarray(rgba, "RGBA")).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_bad_inputs_give_one_clear_error(tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageInputError, match="not an image file"):
        read_rgb(text)
    huge = io.BytesIO()
    Image.new("1", (12000, 9000)).save(huge, format="PNG")  # 108 Mpx, a small file
    huge.seek(0)
    with pytest.raises(ImageTooLargeError, match="Mpx"):
        read_rgb(huge)


# ----------------------------------------------------------------------------------------------------- masks


def test_canvas_mask_is_channel_zero() -> None:
    sketch = np.zeros((2, 2, 3), dtype=np.uint8)
    sketch[0, 0] = (255, 0, 0)
    sketch[1, 1] = (0, 255, 255)
    assert canvas_mask(sketch).tolist() == [[255, 0], [0, 0]]


def test_uploaded_mask_is_resized_averaged_and_thresholded() -> None:
    upload = np.zeros((4, 4, 3), dtype=np.uint8)
    upload[:, :, 0] = 255
    upload[:, :, 1] = 130  # mean (255 + 130 + 0) / 3 = 128.3 > 127
    assert binarise_uploaded_mask(upload, 4, 4).tolist() == [[255] * 4] * 4
    upload[:, :, 1] = 126  # mean 127.0 is not > 127
    assert binarise_uploaded_mask(upload, 4, 4).tolist() == [[0] * 4] * 4
    half = np.zeros((8, 8), dtype=np.uint8)
    half[:, 4:] = 255  # gray 2-D upload, twice the image size
    resized = binarise_uploaded_mask(half, 4, 4)
    assert resized.shape == (4, 4) and resized.tolist() == [[0, 0, 255, 255]] * 4


def test_erode_and_dilate_use_a_3x3_kernel_per_iteration() -> None:
    mask = np.zeros((9, 9), dtype=np.uint8)
    mask[4, 4] = 255
    assert int((erode_or_dilate(mask, 2) == 255).sum()) == 25  # 5×5 square
    assert erode_or_dilate(mask, 0) is mask
    block = np.zeros((9, 9), dtype=np.uint8)
    block[2:7, 2:7] = 255
    eroded = erode_or_dilate(block, -1)
    assert np.argwhere(eroded == 255).min(axis=0).tolist() == [3, 3]
    assert int((eroded == 255).sum()) == 9


def test_assemble_mask_combines_grows_and_inverts() -> None:
    canvas = np.zeros((6, 6, 3), dtype=np.uint8)
    canvas[0, 0, 0] = 255
    upload = np.zeros((3, 3), dtype=np.uint8)
    upload[2, 2] = 255  # bottom-right third of a 6×6 image after the resize
    mask = assemble_mask(6, 6, canvas=canvas, uploaded=upload)
    assert mask[0, 0] == 255 and mask[5, 5] == 255 and mask[2, 2] == 0
    grown = assemble_mask(6, 6, canvas=canvas, grow=1)
    assert np.argwhere(grown == 255).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    inverted = assemble_mask(6, 6, canvas=canvas, grow=1, invert=True)
    assert np.array_equal(inverted, 255 - grown)
    assert not assemble_mask(6, 6).any()
    with pytest.raises(MaskError, match="canvas mask is 6×6 but the image is 5×6"):
        assemble_mask(6, 5, canvas=canvas)


def test_inpaint_work_needs_a_mask_above_127_or_an_outpaint_direction() -> None:
    mask = np.full((4, 4), 127, dtype=np.uint8)
    assert not has_inpaint_work(mask)
    assert has_inpaint_work(mask, ["left"])
    mask[1, 1] = 128
    assert has_inpaint_work(mask)


# ----------------------------------------------------------------------------------------------------- outpaint


def test_outpaint_pads_top_bottom_then_left_right_of_the_new_size() -> None:
    image = np.arange(10 * 7 * 3, dtype=np.uint8).reshape(10, 7, 3)
    mask = np.zeros((10, 7), dtype=np.uint8)
    padded, padded_mask = outpaint(image, mask, ["Top", "bottom", "LEFT"])
    # int(0.3·10) = 3 rows on top and bottom → 16 rows; then int(0.3·7) = 2 columns on the left → 9 columns.
    assert padded.shape == (16, 9, 3) and padded_mask.shape == (16, 9)
    assert np.array_equal(padded[3:13, 2:], image)
    assert np.array_equal(padded[0, 2:], image[0]) and np.array_equal(padded[15, 2:], image[9])
    assert np.array_equal(padded[5, 0], image[2, 0]) and np.array_equal(padded[0, 0], image[0, 0])
    assert (padded_mask[3:13, 2:] == 0).all()
    assert int((padded_mask == 255).sum()) == 16 * 9 - 10 * 7


def test_outpaint_right_uses_the_height_padded_width() -> None:
    image = np.zeros((20, 10, 3), dtype=np.uint8)
    padded, mask = outpaint(image, np.zeros((20, 10), dtype=np.uint8), ["right", "top"])
    assert padded.shape == (26, 13, 3)  # 20 + int(6.0); 10 + int(3.0)
    assert mask[:6].min() == 255 and mask[:, 10:].min() == 255 and mask[6:, :10].max() == 0
    unchanged, same_mask = outpaint(image, np.zeros((20, 10), dtype=np.uint8), [])
    assert unchanged.shape == (20, 10, 3) and same_mask.shape == (20, 10)


def test_outpaint_refuses_unknown_directions_and_mismatched_masks() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(MaskError, match="unknown outpaint direction 'up'"):
        outpaint(image, np.zeros((4, 4), dtype=np.uint8), ["up"])
    with pytest.raises(MaskError, match="does not match"):
        outpaint(image, np.zeros((3, 4), dtype=np.uint8), ["left"])
