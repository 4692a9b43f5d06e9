"""Model folders, the on-disk hash cache, `verify_files` and `mark_corrupted`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from foci.files.downloads import CatalogueEntry
from foci.files.folders import MODEL_KINDS, ModelFolders, ModelFoldersError
from foci.files.hash_cache import HashCache, mark_corrupted, verify_files


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------------- model folders


def test_default_layout(tmp_path):
    folders = ModelFolders.default(tmp_path)
    assert folders.folders("checkpoints") == [tmp_path / "checkpoints"]
    assert folders.download_folder("prompt_expansion") == tmp_path / "prompt_expansion" / "fooocus_expansion"
    assert folders.download_folder("upscale_models") == tmp_path / "upscale_models"
    assert set(folders.paths) == set(MODEL_KINDS) and len(MODEL_KINDS) == 12
    assert folders == ModelFolders.default(tmp_path) and hash(folders) == hash(ModelFolders.default(tmp_path))
    assert folders != ModelFolders.default(tmp_path / "other")
    with pytest.raises(ModelFoldersError, match="unknown model kind 'lora'"):
        folders.folders("lora")


def test_from_settings(tmp_path):
    settings = {
        "path_checkpoints": [str(tmp_path / "ckpt-a"), "ckpt-b"],
        "path_loras": str(tmp_path / "loras-x"),
        "path_fooocus_expansion": "exp",
        "path_outputs": "outputs",
        "default_model": "ignored.safetensors",
    }
    folders = ModelFolders.from_settings(settings, tmp_path / "models")
    assert folders.folders("checkpoints") == [tmp_path / "ckpt-a", tmp_path / "models" / "ckpt-b"]
    assert folders.download_folder("checkpoints") == tmp_path / "ckpt-a"
    assert folders.folders("loras") == [tmp_path / "loras-x"]
    assert folders.folders("prompt_expansion") == [tmp_path / "models" / "exp"]
    assert folders.folders("vae") == [tmp_path / "models" / "vae"]
    with pytest.raises(ModelFoldersError, match="unknown setting 'path_lora'"):
        ModelFolders.from_settings({"path_lora": "x"}, tmp_path)
    with pytest.raises(ModelFoldersError, match="'path_vae' must be a folder or a non-empty list"):
        ModelFolders.from_settings({"path_vae": []}, tmp_path)
    with pytest.raises(ModelFoldersError, match="'path_sam' must be a folder"):
        ModelFolders.from_settings({"path_sam": 3}, tmp_path)


def test_list_files_and_find_across_several_folders(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    touch(first / "b.safetensors", b"first")
    touch(first / "sub" / "c.ckpt")
    touch(first / "notes.txt")
    touch(first / "d.safetensors.part")
    touch(first / "e.safetensors.corrupted")
    touch(first / ".hidden" / "f.safetensors")
    touch(second / "b.safetensors", b"second")
    touch(second / "A.pth")
    touch(second / "inpaint_v26.fooocus.patch")
    folders = ModelFolders.from_settings({"path_checkpoints": [str(first), str(second)]}, tmp_path)
    assert folders.list_files("checkpoints") == [Path("A.pth"), Path("b.safetensors"),
                                                 Path("inpaint_v26.fooocus.patch"), Path("sub/c.ckpt")]
    assert folders.list_files("checkpoints", suffixes=(".txt",)) == [Path("notes.txt")]
    assert folders.list_files("loras") == []  # folder does not exist yet
    assert folders.find("checkpoints", "b.safetensors").read_bytes() == b"first"
    assert folders.find("checkpoints", "A.pth") == second / "A.pth"
    assert folders.find("checkpoints", "sub/c.ckpt") == first / "sub" / "c.ckpt"
    assert folders.find("checkpoints", "sub\\c.ckpt") == first / "sub" / "c.ckpt"
    assert folders.find("checkpoints", "missing.safetensors") is None
    assert folders.find("checkpoints", "sub") is None  # a folder is not a model file
    for bad in ("../one/b.safetensors", str(first / "b.safetensors"), "C:\\x.ckpt", ""):
        with pytest.raises(ModelFoldersError):
            folders.find("checkpoints", bad)


# ---------------------------------------------------------------------------------------------------- hash cache


def test_hash_cache_computes_persists_and_invalidates(tmp_path):
    model = touch(tmp_path / "m.safetensors", b"one")
    cache_file = tmp_path / "models" / ".foci_hashes.json"
    cache = HashCache(cache_file)
    expected = hashlib.sha256(b"one").hexdigest()
    assert cache.sha256(model) == expected
    assert cache.short(model) == expected[:10]
    stored = json.loads(cache_file.read_text())
    assert stored["files"][str(model.resolve())]["sha256"] == expected

    # Same size and mtime: a new instance trusts the file on disk and does not hash again.
    stat = model.stat()
    model.write_bytes(b"two")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert HashCache(cache_file).sha256(model) == expected

    # A changed mtime invalidates.
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"two").hexdigest()

    # A changed size invalidates even with the same mtime.
    stat = model.stat()
    model.write_bytes(b"three")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.sha256(model) == hashlib.sha256(b"three").hexdigest()
    assert not list(cache_file.parent.glob("*.tmp"))


def test_hash_cache_ignores_a_damaged_file_and_merges_instances(tmp_path):
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{not json")
    a, b = touch(tmp_path / "a.bin", b"a"), touch(tmp_path / "b.bin", b"b")
    first, second = HashCache(cache_file), HashCache(cache_file)
    first.sha256(a)
    second.record(b, "0" * 64)
    files = json.loads(cache_file.read_text())["files"]
    assert set(files) == {str(a.resolve()), str(b.resolve())}
    assert HashCache(cache_file).sha256(b) == "0" * 64
    with pytest.raises(FileNotFoundError):
        first.sha256(tmp_path / "missing.bin")


def test_hash_cache_many_threads(tmp_path):
    paths = [touch(tmp_path / f"{i}.bin", bytes([i]) * (1000 + i)) for i in range(12)]
    cache = HashCache(tmp_path / "hashes.json")
    hashes = cache.sha256_many(paths + paths[:3], workers=4)
    assert hashes == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(json.loads((tmp_path / "hashes.json").read_text())["files"]) == 12


def test_verify_files_and_mark_corrupted(tmp_path):
    good, bad = b"good model", b"bad model!"
    catalogue = {
        "good.bin": CatalogueEntry("good.bin", "https://h/good.bin", "loras", len(good),
                                   hashlib.sha256(good).hexdigest(), "x"),
        "bad.bin": CatalogueEntry("bad.bin", "https://h/bad.bin", "loras", len(good),
                                  hashlib.sha256(good).hexdigest(), "x"),
        "short.bin": CatalogueEntry("short.bin", "https://h/short.bin", "vae", 100, None, "x"),
        "nohash.bin": CatalogueEntry("nohash.bin", "https://h/nohash.bin", "vae", None, None, "x"),
        "absent.bin": CatalogueEntry("absent.bin", "https://h/absent.bin", "vae", None, None, "x"),
    }
    folders = ModelFolders.from_settings({"path_loras": ["l1", "l2"]}, tmp_path)
    touch(tmp_path / "l1" / "good.bin", good)
    touch(tmp_path / "l2" / "bad.bin", bad)
    touch(tmp_path / "vae" / "short.bin", b"12")
    touch(tmp_path / "vae" / "nohash.bin", b"?")
    cache = HashCache(tmp_path / "hashes.json")
    results = dict(verify_files(folders, catalogue, cache))
    assert results == {
        tmp_path / "l1" / "good.bin": "ok",
        tmp_path / "l2" / "bad.bin": f"corrupt: expected sha256 {hashlib.sha256(good).hexdigest()} "
                                     f"got {hashlib.sha256(bad).hexdigest()}",
        tmp_path / "vae" / "short.bin": "corrupt: expected 100 bytes got 2",
        tmp_path / "vae" / "nohash.bin": "unknown hash",
    }
    assert dict(verify_files(folders, catalogue)) == results  # without a cache too

    moved = mark_corrupted(tmp_path / "l2" / "bad.bin")
    assert moved == tmp_path / "l2" / "bad.bin.corrupted" and moved.read_bytes() == bad
    assert not (tmp_path / "l2" / "bad.bin").exists()
    assert (tmp_path / "l2" / "bad.bin") not in dict(verify_files(folders, catalogue, cache))
