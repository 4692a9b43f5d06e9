"""Output paths, saving with embedded metadata, read-back, and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import random
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from foci.files.hashing import sha256_file, short_hash
from foci.records.metadata import to_a1111_text, to_fooocus_json
from foci.records.outputs import (
    format_metadata_for_cli,
    new_output_path,
    read_metadata,
    save_image,
)
from tests.unit.test_metadata import make_record, restore, rich_task

FORMATS = ["png", "jpeg", "webp"]
SCHEMES = ["fooocus", "a1111"]


def sample_image() -> Image.Image:
    """A small deterministic RGB gradient."""
    image = Image.new("RGB", (64, 48))
    image.putdata([(x * 4, y * 5, (x * y) % 256) for y in range(48) for x in range(64)])
    return image


# ----------------------------------------------------------------------------------------------------- paths


def test_output_path_layout(tmp_path: Path) -> None:
    moment = datetime(2024, 3, 5, 7, 8, 9)
    expected_number = random.Random(7).randint(1000, 9999)
    path = new_output_path(tmp_path, "webp", now=moment, rng=random.Random(7))
    assert path == tmp_path / "2024-03-05" / f"2024-03-05_07-08-09_{expected_number}.webp"
    assert path.parent.is_dir() and not path.exists()
    assert new_output_path(tmp_path, "jpg", now=moment, rng=random.Random(7)).suffix == ".jpeg"
    with pytest.raises(ValueError, match="unsupported image format"):
        new_output_path(tmp_path, "gif", now=moment)


def test_output_path_never_reuses_an_existing_name(tmp_path: Path) -> None:
    moment = datetime(2024, 12, 31, 23, 59, 59)
    first = new_output_path(tmp_path, "png", now=moment, rng=random.Random(3))
    first.write_bytes(b"taken")
    second = new_output_path(tmp_path, "png", now=moment, rng=random.Random(3))
    assert second != first and second.parent == first.parent
    draws = random.Random(3)
    assert second.name == f"2024-12-31_23-59-59_{[draws.randint(1000, 9999) for _ in range(2)][1]}.png"


# ----------------------------------------------------------------------------------------------- save/read


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_save_read_round_trip(tmp_path: Path, fmt: str, scheme: str) -> None:
    original = rich_task(metadata_scheme=scheme, output_format=fmt)
    record = make_record(original)
    path = save_image(sample_image(), tmp_path / f"out.{fmt}", record=record, scheme=scheme)
    assert path == tmp_path / f"out.{fmt}"
    found = read_metadata(path)
    assert found is not None
    read_scheme, payload = found
    assert read_scheme == scheme
    if scheme == "fooocus":
        assert payload == json.loads(to_fooocus_json(record))
    else:
        assert payload == to_a1111_text(record)
    restored = restore(payload, read_scheme)
    assert restored == original.model_copy(update={"output_format": "png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{fmt}"]  # no temporary file left behind


@pytest.mark.parametrize("scheme", SCHEMES)
def test_png_carries_both_schemes(tmp_path: Path, scheme: str) -> None:
    record = make_record(rich_task())
    path = save_image(sample_image(), tmp_path / "a.png", record=record, scheme=scheme)
    with Image.open(path) as image:
        text = dict(image.text)
    fooocus, a1111 = to_fooocus_json(record), to_a1111_text(record)
    if scheme == "fooocus":
        assert text == {"parameters": fooocus, "fooocus_scheme": "fooocus", "foci_a1111": a1111}
    else:
        assert text == {"parameters": a1111, "fooocus_scheme": "a1111", "foci_fooocus": fooocus}


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_exif_tags(tmp_path: Path, fmt: str) -> None:
    record = make_record(rich_task(prompt="plain ascii prompt"))
    path = save_image(sample_image(), tmp_path / f"a.{fmt}", record=record, scheme="fooocus")
    with Image.open(path) as image:
        exif = image.getexif()
        assert exif[0x9286] == to_fooocus_json(record)  # plain text, as Fooocus reads it
        assert exif[0x927C] == "fooocus"
        assert exif[0x0131] == "Foci 0.1.0"
        if fmt == "jpeg":
            assert image.info.get("progressive") == 1
    a1111 = save_image(sample_image(), tmp_path / f"b.{fmt}", record=make_record(rich_task()), scheme="a1111")
    with Image.open(a1111) as image:
        raw = image.getexif()[0x9286]
    assert raw.startswith(b"UNICODE\x00")  # non-ASCII prompt: EXIF UNICODE user comment
    assert raw[8:].decode("utf-16-be") == to_a1111_text(make_record(rich_task()))


@pytest.mark.parametrize("fmt", FORMATS)
def test_saving_is_deterministic(tmp_path: Path, fmt: str) -> None:
    record = make_record(rich_task())
    first = save_image(sample_image(), tmp_path / f"1.{fmt}", record=record, scheme="a1111")
    second = save_image(sample_image(), tmp_path / f"2.{fmt}", record=record.model_copy(), scheme="a1111")
    assert first.read_bytes() == second.read_bytes()
    other = save_image(sample_image(), tmp_path / f"3.{fmt}", record=make_record(rich_task(seed=9)))
    assert other.read_bytes() != first.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_without_metadata(tmp_path: Path, fmt: str) -> None:
    path = save_image(sample_image(), tmp_path / f"plain.{fmt}", record=None)
    assert read_metadata(path) is None
    assert "no generation metadata" in format_metadata_for_cli(path)
    with Image.open(path) as image:
        assert image.size == (64, 48)


def test_save_overwrites_atomically_and_converts_rgba_for_jpeg(tmp_path: Path) -> None:
    target = tmp_path / "x.jpeg"
    target.write_bytes(b"old")
    save_image(sample_image().convert("RGBA"), target, record=None)
    with Image.open(target) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpeg"]


def test_failed_save_leaves_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.png"
    target.write_bytes(b"previous image")
    with pytest.raises(OSError, match="cannot write mode F"):
        save_image(Image.new("F", (8, 8)), target, record=make_record(rich_task()))
    assert target.read_bytes() == b"previous image"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_save_rejects_bad_scheme_and_suffix(tmp_path: Path) -> None:
    record = make_record(rich_task())
    with pytest.raises(ValueError, match="unknown metadata scheme"):
        save_image(sample_image(), tmp_path / "a.png", record=record, scheme="exif")
    with pytest.raises(ValueError, match="unsupported image format"):
        save_image(sample_image(), tmp_path / "a.gif", record=record)
    assert list(tmp_path.iterdir()) == []


def test_reads_automatic1111_style_files(tmp_path: Path) -> None:
    text = "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    png = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    sample_image().save(png, pnginfo=info)
    assert read_metadata(png) == ("a1111", text)
    jpeg = tmp_path / "a1111.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    sample_image().save(jpeg, exif=exif)
    assert read_metadata(jpeg) == ("a1111", text)
    assert restore(read_metadata(jpeg)[1]).sampler == "euler_ancestral"


def test_format_metadata_for_cli(tmp_path: Path) -> None:
    record = make_record(rich_task())
    fooocus = save_image(sample_image(), tmp_path / "f.png", record=record, scheme="fooocus")
    printed = format_metadata_for_cli(fooocus)
    assert json.loads(printed) == json.loads(to_fooocus_json(record))
    assert printed.startswith('{\n  "adaptive_cfg": 5.5,')
    a1111 = save_image(sample_image(), tmp_path / "a.webp", record=record, scheme="a1111")
    assert format_metadata_for_cli(a1111) == to_a1111_text(record)


def test_non_image_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        read_metadata(path)


# --------------------------------------------------------------------------------------------------- hashes


def test_short_hash_of_known_file(tmp_path: Path) -> None:
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert short_hash(path) == "ba7816bf8f"
    big = tmp_path / "big.bin"
    content = bytes(range(256)) * 10_000 + b"tail"  # spans several 1 MiB blocks
    big.write_bytes(content)
    assert sha256_file(big) == hashlib.sha256(content).hexdigest()
    assert short_hash(str(big)) == hashlib.sha256(content).hexdigest()[:10]


def test_short_hash_memo_follows_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"version one")
    first = short_hash(path)
    stat = path.stat()
    # Same size and mtime: the memo answers without reading (proves memoisation).
    path.write_bytes(b"version two")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert short_hash(path) == first
    # A new mtime invalidates it.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert short_hash(path) == hashlib.sha256(b"version two").hexdigest()[:10]
    # So does a new size, even with the old mtime restored.
    path.write_bytes(b"version three")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert short_hash(path) == hashlib.sha256(b"version three").hexdigest()[:10]
    # The memo is keyed by the resolved path, so a relative spelling hits the same entry.
    assert short_hash(Path(os.path.relpath(path))) == hashlib.sha256(b"version three").hexdigest()[:10]
