"""Catalogue and downloader tests against a loopback HTTP server with injected faults."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import socket
import time
from pathlib import Path

import pytest

from foci.files.downloads import (
    ALWAYS,
    FEATURE_FILES,
    PRESETS,
    CatalogueEntry,
    CatalogueError,
    Downloader,
    DownloadError,
    DownloadProgress,
    feature_files,
    load_catalogue,
    missing_files,
    required_files,
    tqdm_progress,
)
from foci.files.folders import MODEL_KINDS, ModelFolders
from foci.settings.performance import performance_lora_names
from tests.http_fixtures import Fault, FileServer

SIZE = 64 * 1024
CHUNK = 4096


def payload(size: int = SIZE, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_for(url: str, data: bytes, *, name: str = "model.dat", folder: str = "checkpoints", known_size: bool = True,
              known_sha: bool = True, save_as: str | None = None) -> CatalogueEntry:
    return CatalogueEntry(name=name, url=url, folder=folder, size=len(data) if known_size else None,
                          sha256=sha(data) if known_sha else None, licence="test", presets=(), save_as=save_as)


class Recorder:
    """Collects progress events and backoff sleeps."""

    def __init__(self) -> None:
        self.events: list[DownloadProgress] = []
        self.sleeps: list[float] = []

    def progress(self, event: DownloadProgress) -> None:
        self.events.append(event)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def downloader(recorder: Recorder, **options: object) -> Downloader:
    settings: dict[str, object] = {"retries": 3, "timeout": 5.0, "backoff": 0.5, "chunk_size": CHUNK, "environ": {}}
    settings.update(options)
    return Downloader(progress=recorder.progress, sleep=recorder.sleep, **settings)  # type: ignore[arg-type]


@pytest.fixture()
def server():
    with FileServer() as running:
        yield running


@pytest.fixture()
def recorder() -> Recorder:
    return Recorder()


# ----------------------------------------------------------------------------------------------------- downloads


def test_fresh_download_verifies_logs_sha_and_reports_monotonic_progress(server, recorder, tmp_path, caplog):
    data = payload()
    server.add_file("/m.bin", data)
    entry = entry_for(server.url("/m.bin"), data)
    with caplog.at_level(logging.INFO, logger="foci.files.downloads"):
        path = downloader(recorder).fetch(entry, tmp_path / "checkpoints")
    assert path == tmp_path / "checkpoints" / "model.dat"
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.dat"]
    assert f"sha256 {sha(data)}" in caplog.text
    counts = [e.downloaded for e in recorder.events]
    assert counts == sorted(counts) and counts[0] == 0
    assert [e.done for e in recorder.events].count(True) == 1 and recorder.events[-1].done
    assert recorder.events[-1].downloaded == SIZE and all(e.total == SIZE for e in recorder.events)
    assert len(recorder.events) == 2 + SIZE // CHUNK  # start, one per chunk, done
    assert recorder.sleeps == []


def test_dropped_connection_resumes_with_range_and_verifies(server, recorder, tmp_path):
    data = payload(seed=1)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(drop_after=10_000))
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path.read_bytes() == data
    first, second = server.requests_for("/m.bin")
    assert first.header("Range") is None
    assert second.header("Range") == "bytes=10000-"
    assert recorder.sleeps == [0.5]
    counts = [e.downloaded for e in recorder.events]
    assert counts == sorted(counts) and recorder.events[-1].done
    assert not (tmp_path / "model.dat.part").exists()


def test_resume_from_part_left_by_an_earlier_run(server, recorder, tmp_path):
    data = payload(seed=2)
    server.add_file("/m.bin", data)
    (tmp_path / "model.dat.part").write_bytes(data[:30_000])
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path.read_bytes() == data
    (request,) = server.requests_for("/m.bin")
    assert request.header("Range") == "bytes=30000-"
    assert recorder.events[0].downloaded == 30_000


def test_complete_part_file_is_verified_without_a_request(server, recorder, tmp_path):
    data = payload(seed=3)
    (tmp_path / "model.dat.part").write_bytes(data)
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path.read_bytes() == data and server.requests == []


def test_wrong_bytes_fail_the_checksum_and_leave_no_file(server, recorder, tmp_path):
    data = payload(seed=4)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(corrupt=True))
    with pytest.raises(DownloadError) as caught:
        downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    corrupted = bytes(b ^ 0xFF for b in data)
    message = str(caught.value)
    assert f"expected sha256 {sha(data)}" in message and f"got {sha(corrupted)}" in message
    assert "model.dat" in message
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_fail_at_once(server, recorder, tmp_path, status):
    data = payload(seed=5)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(status=status))
    url = server.url("/m.bin")
    with pytest.raises(DownloadError, match=f"HTTP {status}") as caught:
        downloader(recorder).fetch(entry_for(url, data), tmp_path)
    assert url in str(caught.value)
    assert len(server.requests) == 1 and recorder.sleeps == []
    assert not (tmp_path / "model.dat").exists()


def test_missing_file_on_server_is_a_clear_404(server, recorder, tmp_path):
    url = server.url("/nowhere.bin")
    with pytest.raises(DownloadError, match="HTTP 404.*file not found"):
        downloader(recorder).fetch(entry_for(url, b"x"), tmp_path)
    assert len(server.requests) == 1


def test_server_errors_are_retried_with_exponential_backoff(server, recorder, tmp_path):
    data = payload(seed=6)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(status=500), Fault(status=503), Fault(status=429))
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path.read_bytes() == data
    assert len(server.requests) == 4
    assert recorder.sleeps == [0.5, 1.0, 2.0]


def test_retries_are_bounded(server, recorder, tmp_path):
    data = payload(seed=7)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", *[Fault(status=500)] * 5)
    with pytest.raises(DownloadError, match="after 3 attempts"):
        downloader(recorder, retries=2).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert len(server.requests) == 3 and recorder.sleeps == [0.5, 1.0]
    assert not (tmp_path / "model.dat").exists()


def test_slow_server_times_out_after_retries_in_bounded_time(server, recorder, tmp_path):
    data = payload(seed=8)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", *[Fault(delay=10.0)] * 3)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="after 3 attempts") as caught:
        downloader(recorder, timeout=0.25, retries=2, backoff=0.0).fetch(entry_for(server.url("/m.bin"), data),
                                                                          tmp_path)
    elapsed = time.monotonic() - started
    assert "timed out" in str(caught.value)
    assert 0.7 < elapsed < 3.0
    assert len(server.requests) == 3
    assert not (tmp_path / "model.dat").exists()


def test_stall_mid_body_times_out_and_resumes(server, recorder, tmp_path):
    data = payload(seed=19)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(drop_after=12_288, hang=10.0))
    started = time.monotonic()
    path = downloader(recorder, timeout=0.25).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert time.monotonic() - started < 3.0
    assert path.read_bytes() == data
    assert [r.header("Range") for r in server.requests_for("/m.bin")] == [None, "bytes=12288-"]


def test_server_ignoring_range_restarts_from_zero(recorder, tmp_path):
    data = payload(seed=9)
    with FileServer({"/m.bin": data}, ignore_range=True) as server:
        server.fail_next("/m.bin", Fault(drop_after=20_000))
        path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
        requests = server.requests_for("/m.bin")
    assert path.read_bytes() == data
    assert [r.header("Range") for r in requests] == [None, "bytes=20000-"]
    counts = [e.downloaded for e in recorder.events]
    restart = counts.index(0, 1)  # the restart is reported as a fresh 0
    assert counts[restart - 1] == 20_000
    assert counts[restart:] == sorted(counts[restart:]) and recorder.events[-1].done


def test_redirects_are_followed_and_keep_the_range_header(server, recorder, tmp_path):
    data = payload(seed=10)
    server.add_file("/cdn/m.bin", data)
    server.fail_next("/repo/resolve/main/m.bin", Fault(redirect="/cdn/m.bin"), Fault(redirect="/cdn/m.bin"))
    server.fail_next("/cdn/m.bin", Fault(drop_after=5_000))
    path = downloader(recorder).fetch(entry_for(server.url("/repo/resolve/main/m.bin"), data), tmp_path)
    assert path.read_bytes() == data
    assert [r.header("Range") for r in server.requests_for("/cdn/m.bin")] == [None, "bytes=5000-"]


def test_unknown_size_and_hash_still_download(server, recorder, tmp_path):
    data = payload(seed=11)
    server.add_file("/m.bin", data)
    entry = entry_for(server.url("/m.bin"), data, known_size=False, known_sha=False)
    assert downloader(recorder).fetch(entry, tmp_path).read_bytes() == data


def test_server_size_disagreeing_with_catalogue_fails_before_streaming(server, recorder, tmp_path):
    data = payload(seed=12)
    server.add_file("/m.bin", data)
    entry = entry_for(server.url("/m.bin"), data + b"extra")
    with pytest.raises(DownloadError, match=f"server reports {SIZE} bytes .* expects {SIZE + 5}"):
        downloader(recorder).fetch(entry, tmp_path)
    assert list(tmp_path.iterdir()) == [] and len(server.requests) == 1


def test_existing_complete_file_makes_no_request(server, recorder, tmp_path):
    data = payload(seed=13)
    (tmp_path / "model.dat").write_bytes(data)
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path == tmp_path / "model.dat"
    assert server.requests == []
    assert recorder.events == [DownloadProgress("model.dat", SIZE, SIZE, True)]


def test_existing_wrong_file_is_marked_corrupted_and_downloaded_again(server, recorder, tmp_path):
    data = payload(seed=14)
    server.add_file("/m.bin", data)
    (tmp_path / "model.dat").write_bytes(b"truncated")
    path = downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert path.read_bytes() == data
    assert (tmp_path / "model.dat.corrupted").read_bytes() == b"truncated"


def torch_archive(seed: int = 0) -> bytes:
    """A small PyTorch zip archive of weights, as `torch.save` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(16, dtype=torch.float32) + seed}, buffer)
    return buffer.getvalue()


def test_save_as_names_the_file_on_disk(server, recorder, tmp_path):
    data = torch_archive(15)
    server.add_file("/fooocus_expansion.bin", data)
    entry = entry_for(server.url("/fooocus_expansion.bin"), data, name="fooocus_expansion.bin",
                      folder="prompt_expansion", save_as="pytorch_model.bin")
    folders = ModelFolders.default(tmp_path)
    (path,) = downloader(recorder).ensure([entry.name], folders, {entry.name: entry})
    assert path == tmp_path / "prompt_expansion" / "fooocus_expansion" / "pytorch_model.bin"
    assert path.read_bytes() == data


def test_mirror_rewrites_the_hugging_face_host(server, recorder, tmp_path):
    data = payload(seed=16)
    server.add_file("/hf/owner/repo/resolve/main/m.bin", data)
    entry = entry_for("https://huggingface.co/owner/repo/resolve/main/m.bin", data)
    path = downloader(recorder, mirror=server.url("/hf/")).fetch(entry, tmp_path)
    assert path.read_bytes() == data
    assert [r.path for r in server.requests] == ["/hf/owner/repo/resolve/main/m.bin"]
    assert server.requests[0].header("Host") == server.base_url.removeprefix("http://")


def test_mirror_from_environment_and_precedence():
    url = "https://huggingface.co/a/b/resolve/main/c.bin"
    github = "https://github.com/o/r/releases/download/v1/f.pth"
    assert Downloader(environ={}).resolve_url(url) == url
    assert Downloader(environ={"HF_MIRROR": "https://hf-mirror.com/"}).resolve_url(url) == \
        "https://hf-mirror.com/a/b/resolve/main/c.bin"
    assert Downloader(environ={"HF_ENDPOINT": "https://e.example"}).resolve_url(url) == \
        "https://e.example/a/b/resolve/main/c.bin"
    both = {"HF_MIRROR": "https://m.example", "HF_ENDPOINT": "https://e.example"}
    assert Downloader(environ=both).resolve_url(url).startswith("https://m.example/")
    assert Downloader(mirror="https://x.example", environ=both).resolve_url(url).startswith("https://x.example/")
    assert Downloader(environ=both).resolve_url(github) == github
    assert Downloader(environ=both).resolve_url("https://huggingface.com/x") == "https://huggingface.com/x"
    with pytest.raises(DownloadError, match="mirror"):
        Downloader(mirror="hf-mirror.com", environ={})


@pytest.fixture()
def no_sockets(monkeypatch) -> list[str]:
    """Record (and refuse) every attempt to create a socket, connect or resolve a name."""
    attempts: list[str] = []

    def refuse(what: str):
        def guard(*args: object, **kwargs: object):
            attempts.append(what)
            raise OSError(f"test: {what} is forbidden")

        return guard

    monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return attempts


def test_offline_never_opens_a_socket_and_names_url_and_folder(no_sockets, tmp_path):
    catalogue = load_catalogue()
    folders = ModelFolders.from_settings({"path_checkpoints": [str(tmp_path / "a"), str(tmp_path / "b")]}, tmp_path)
    names = ["juggernautXL_v8Rundiffusion.safetensors", "fooocus_expansion.bin"]
    offline = Downloader(offline=True, environ={"HF_MIRROR": "https://hf-mirror.com"})
    with pytest.raises(DownloadError) as caught:
        offline.ensure(names, folders, catalogue)
    message = str(caught.value)
    assert message.startswith("offline: 2 model file(s) missing")
    assert ("https://hf-mirror.com/lllyasviel/fav_models/resolve/main/fav/juggernautXL_v8Rundiffusion.safetensors"
            f" -> {tmp_path / 'a' / 'juggernautXL_v8Rundiffusion.safetensors'}") in message
    assert f"{tmp_path / 'prompt_expansion' / 'fooocus_expansion' / 'pytorch_model.bin'}" in message
    assert "https://hf-mirror.com/lllyasviel/misc/resolve/main/fooocus_expansion.bin" in message
    with pytest.raises(DownloadError, match="offline"):
        offline.fetch(catalogue["xlvaeapp.pth"], tmp_path / "vae_approx")
    assert no_sockets == []


def test_offline_uses_files_already_present_in_any_folder(no_sockets, tmp_path):
    data = payload(2000, seed=17)
    entry = entry_for("https://huggingface.co/o/r/resolve/main/model.dat", data)
    folders = ModelFolders.from_settings({"path_checkpoints": [str(tmp_path / "a"), str(tmp_path / "b")]}, tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.dat").write_bytes(data)
    assert Downloader(offline=True, environ={}).ensure(["model.dat"], folders, {"model.dat": entry}) == \
        [tmp_path / "b" / "model.dat"]
    (tmp_path / "b" / "model.dat").write_bytes(b"bad")
    with pytest.raises(DownloadError, match="offline"):
        Downloader(offline=True, environ={}).ensure(["model.dat"], folders, {"model.dat": entry})
    assert no_sockets == []


def test_ensure_downloads_into_the_first_folder(server, recorder, tmp_path):
    data = payload(seed=18)
    server.add_file("/m.bin", data)
    entry = entry_for(server.url("/m.bin"), data)
    folders = ModelFolders.from_settings({"path_checkpoints": ["first", "second"]}, tmp_path)
    assert missing_files(["model.dat"], folders, {"model.dat": entry}) == [entry]
    (path,) = downloader(recorder).ensure(["model.dat"], folders, {"model.dat": entry})
    assert path == tmp_path / "first" / "model.dat"
    assert missing_files(["model.dat"], folders, {"model.dat": entry}) == []
    with pytest.raises(CatalogueError, match="'nope.bin'"):
        missing_files(["nope.bin"], folders, {"model.dat": entry})


def test_tqdm_progress_drives_one_bar_per_file():
    out = io.StringIO()
    callback = tqdm_progress(file=out, mininterval=0)
    callback(DownloadProgress("a.bin", 0, 2048, False))
    callback(DownloadProgress("b.bin", 0, None, False))
    callback(DownloadProgress("a.bin", 2048, 2048, True))
    callback(DownloadProgress("b.bin", 10, 10, True))
    text = out.getvalue()
    assert "a.bin" in text and "b.bin" in text and "2.00k/2.00k" in text


# ----------------------------------------------------------------------------------------------------- catalogue


def test_catalogue_entries_are_well_formed():
    catalogue = load_catalogue()
    assert len(catalogue) == 46
    for name, entry in catalogue.items():
        assert entry.name == name
        assert entry.url.startswith("https://"), name
        assert entry.folder in MODEL_KINDS, name
        assert entry.size is None or entry.size > 0, name
        assert entry.sha256 is None or (len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0), name
        assert entry.licence, name
        assert set(entry.presets) <= {ALWAYS, *PRESETS}, name
        if entry.url.startswith("https://huggingface.co/"):
            assert "/resolve/main/" in entry.url, name
    file_names = [(e.folder, e.file_name) for e in catalogue.values()]
    assert len(file_names) == len(set(file_names))


def test_catalogue_facts_from_the_reference():
    catalogue = load_catalogue()
    expansion = catalogue["fooocus_expansion.bin"]
    assert (expansion.url, expansion.folder, expansion.file_name, expansion.size) == (
        "https://huggingface.co/lllyasviel/misc/resolve/main/fooocus_expansion.bin", "prompt_expansion",
        "pytorch_model.bin", 351_283_802)
    assert "CC-BY-NC 4.0" in expansion.licence
    assert catalogue["fooocus_expansion_positive.txt"].file_name == "positive.txt"
    assert catalogue["vaeapp_sd15.pth"].url.endswith("/vaeapp_sd15.pt")
    assert catalogue["juggernautXL_v8Rundiffusion.safetensors"].url == (
        "https://huggingface.co/lllyasviel/fav_models/resolve/main/fav/juggernautXL_v8Rundiffusion.safetensors")
    assert catalogue["juggernautXL_v8Rundiffusion.safetensors"].size is None
    assert catalogue["sd_xl_offset_example-lora_1.0.safetensors"].size == 49_553_604
    assert catalogue["sd_xl_offset_example-lora_1.0.safetensors"].licence == "CreativeML Open RAIL++-M"
    assert catalogue["inpaint_v26.fooocus.patch"].size == 1_323_362_033
    assert catalogue["ponyDiffusionV6XL_vae.safetensors"].folder == "vae"
    assert all(e.sha256 is None for e in catalogue.values())  # no reference hashes known yet: none invented


def test_required_files_per_preset_and_performance():
    base = ["xlvaeapp.pth", "vaeapp_sd15.pth", "xl-to-v1_interposer-v4.0.safetensors", "fooocus_expansion.bin",
            "fooocus_expansion_positive.txt"]
    assert required_files("default") == [*base, "juggernautXL_v8Rundiffusion.safetensors",
                                         "sd_xl_offset_example-lora_1.0.safetensors"]
    assert required_files("lcm") == [*base, "juggernautXL_v8Rundiffusion.safetensors", "sdxl_lcm_lora.safetensors"]
    assert required_files("lcm", performance="Speed") == [*base, "juggernautXL_v8Rundiffusion.safetensors"]
    assert required_files("default", performance="hyper_sd")[-1] == "sdxl_hyper_sd_4step_lora.safetensors"
    assert required_files("pony_v6") == [*base, "ponyDiffusionV6XL.safetensors", "ponyDiffusionV6XL_vae.safetensors"]
    assert required_files("sai") == [*base, "sd_xl_offset_example-lora_1.0.safetensors",
                                     "sd_xl_base_1.0_0.9vae.safetensors", "sd_xl_refiner_1.0_0.9vae.safetensors"]
    catalogue = load_catalogue()
    for preset in PRESETS:
        for performance in (None, "Quality", "Speed", "Extreme Speed", "Lightning", "Hyper-SD"):
            names = required_files(preset, performance=performance)
            assert set(names) <= set(catalogue) and len(names) == len(set(names))
            assert any(catalogue[n].folder == "checkpoints" for n in names)
    for feature, names in FEATURE_FILES.items():
        assert set(feature_files(feature)) == set(names) <= set(catalogue)
    assert set(performance_lora_names()) <= set(catalogue)
    with pytest.raises(CatalogueError, match="unknown preset 'nope'"):
        required_files("nope")
    with pytest.raises(CatalogueError, match="unknown performance 'Turbo'"):
        required_files("default", performance="Turbo")


@pytest.mark.parametrize(("change", "message"), [
    ({"url": "ftp://x/y"}, "'url' must be an http"),
    ({"folder": "models"}, "'folder' must be one of"),
    ({"size": 0}, "'size' must be a positive"),
    ({"sha256": "ABC"}, "'sha256' must be 64"),
    ({"name": "a/b.bin"}, "'name' must be a plain file name"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_malformed_catalogue_is_rejected_with_the_file_name(tmp_path, change, message):
    entry = {"name": "a.bin", "url": "https://x/a.bin", "folder": "loras", "size": 1, "sha256": None,
             "licence": "x", "presets": [], "save_as": None}
    path = tmp_path / "cat.json"
    path.write_text(json.dumps({"entries": [entry]}))
    assert load_catalogue(path)["a.bin"].folder == "loras"
    path.write_text(json.dumps({"entries": [{**entry, **change}]}))
    with pytest.raises(CatalogueError, match=message) as caught:
        load_catalogue(path)
    assert str(path) in str(caught.value)


def test_unreadable_catalogue_files(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read catalogue"):
        load_catalogue(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CatalogueError, match="not valid JSON"):
        load_catalogue(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(json.dumps({"entries": [
        {"name": "a", "url": "https://x/a", "folder": "vae", "size": None, "sha256": None, "licence": "x"}] * 2}))
    with pytest.raises(CatalogueError, match="duplicate name 'a'"):
        load_catalogue(tmp_path / "dup.json")


def test_packaged_catalogue_is_a_fresh_copy():
    first = load_catalogue()
    first.clear()
    assert load_catalogue()


def test_catalogue_json_ships_next_to_the_module():
    assert (Path(__file__).parents[2] / "foci" / "files" / "catalogue.json").is_file()


# ------------------------------------------------------------------------------------ integrity (issue 17)


def assert_nothing_installed(folder: Path, file_name: str) -> None:
    assert not (folder / file_name).exists()
    assert not (folder / (file_name + ".part")).exists()


def test_same_size_wrong_bytes_for_a_torch_file_are_refused_naming_the_mirror(server, recorder, tmp_path):
    genuine = torch_archive(1)
    wrong = payload(len(genuine), seed=20)  # same size, no SHA-256 in the catalogue: only the content can tell
    server.add_file("/xlvaeapp.pth", wrong)
    entry = entry_for(server.url("/xlvaeapp.pth"), genuine, name="xlvaeapp.pth", folder="vae_approx",
                      known_sha=False)
    with pytest.raises(DownloadError) as caught:
        downloader(recorder).fetch(entry, tmp_path)
    message = str(caught.value)
    assert "xlvaeapp.pth" in message and server.url("/xlvaeapp.pth") in message
    assert "not a valid vae_approx file" in message and "weights_only" in message
    assert_nothing_installed(tmp_path, "xlvaeapp.pth")


def test_html_error_page_for_a_checkpoint_without_size_is_refused(server, recorder, tmp_path):
    server.add_file("/ckpt.safetensors", b"")
    server.fail_next("/ckpt.safetensors", Fault(body=b"<!DOCTYPE html><html><body>Rate limited</body></html>"))
    entry = CatalogueEntry(name="ckpt.safetensors", url=server.url("/ckpt.safetensors"), folder="checkpoints",
                           size=None, sha256=None, licence="test")
    with pytest.raises(DownloadError, match="HTML page") as caught:
        downloader(recorder).fetch(entry, tmp_path)
    assert server.url("/ckpt.safetensors") in str(caught.value)
    assert_nothing_installed(tmp_path, "ckpt.safetensors")


def test_safetensors_that_is_not_an_sdxl_checkpoint_is_refused(server, recorder, tmp_path, tiny_checkpoint):
    import torch
    from safetensors.torch import save

    lookalike = save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)})
    server.add_file("/ckpt.safetensors", lookalike)
    entry = entry_for(server.url("/ckpt.safetensors"), lookalike, name="ckpt.safetensors", known_sha=False)
    with pytest.raises(DownloadError, match="not a usable SDXL checkpoint"):
        downloader(recorder).fetch(entry, tmp_path)
    assert_nothing_installed(tmp_path, "ckpt.safetensors")
    genuine = tiny_checkpoint.read_bytes()
    server.add_file("/real.safetensors", genuine)
    real = entry_for(server.url("/real.safetensors"), genuine, name="real.safetensors", known_sha=False)
    assert downloader(recorder).fetch(real, tmp_path).read_bytes() == genuine


def test_truncated_safetensors_header_and_binary_text_are_refused(server, recorder, tmp_path):
    import torch
    from safetensors.torch import save

    broken = save({"w": torch.zeros(64)})[:-16]
    server.add_file("/l.safetensors", broken)
    lora = entry_for(server.url("/l.safetensors"), broken, name="l.safetensors", folder="loras", known_sha=False)
    with pytest.raises(DownloadError, match="truncated"):
        downloader(recorder).fetch(lora, tmp_path)
    server.add_file("/positive.txt", b"red\x00\xff\xfe")
    text = entry_for(server.url("/positive.txt"), b"red\x00\xff\xfe", name="positive.txt",
                     folder="prompt_expansion", known_sha=False)
    with pytest.raises(DownloadError, match="not a text file"):
        downloader(recorder).fetch(text, tmp_path)
    server.add_file("/good.txt", b"red\nblue\n")
    good = entry_for(server.url("/good.txt"), b"red\nblue\n", name="good.txt", folder="prompt_expansion",
                     known_sha=False)
    assert downloader(recorder).fetch(good, tmp_path).read_text() == "red\nblue\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]


def test_first_download_pins_the_sha256_and_a_changed_file_is_refused_loudly(server, recorder, tmp_path, caplog):
    from foci.files.hash_cache import FIRST_DOWNLOAD, HashCache

    cache = HashCache(tmp_path / "hashes.json")
    first, changed = torch_archive(1), torch_archive(2)
    assert len(first) == len(changed) and first != changed
    server.add_file("/w.pth", first)
    entry = entry_for(server.url("/w.pth"), first, name="w.pth", folder="upscale_models", known_sha=False)
    models = tmp_path / "models"
    path = downloader(recorder, hash_cache=cache).fetch(entry, models)
    assert HashCache(tmp_path / "hashes.json").pinned("w.pth").sha256 == sha(first)
    assert cache.pinned("w.pth").source == FIRST_DOWNLOAD

    # The mirror now serves other (valid, same-size) bytes: a fresh download is refused, nothing is installed.
    path.unlink()
    server.add_file("/w.pth", changed)
    with caplog.at_level(logging.ERROR, logger="foci.files.downloads"), pytest.raises(DownloadError) as caught:
        downloader(recorder, hash_cache=cache).fetch(entry, models)
    message = str(caught.value)
    assert f"expected sha256 {sha(first)} (first download), got {sha(changed)}" in message
    assert server.url("/w.pth") in message and f"foci models pin w.pth {sha(changed)}" in message
    assert "checksum mismatch" in caplog.text
    assert_nothing_installed(models, "w.pth")

    # A file changed on disk is not used: offline it is an error naming the pinned hash.
    (models / "w.pth").write_bytes(changed)
    with pytest.raises(DownloadError, match=f"expected {sha(first)} \\(first download\\)"):
        downloader(recorder, hash_cache=cache, offline=True).fetch(entry, models)

    # After `foci models pin` (here: the cache call it makes) the new hash is accepted.
    cache.pin("w.pth", sha(changed))
    assert downloader(recorder, hash_cache=cache, offline=True).fetch(entry, models).read_bytes() == changed


def test_config_sha256_overrides_the_catalogue(server, recorder, tmp_path):
    data = torch_archive(3)
    server.add_file("/w.pth", data)
    entry = entry_for(server.url("/w.pth"), data, name="w.pth", folder="upscale_models")  # right catalogue hash
    with pytest.raises(DownloadError, match="config model_sha256"):
        downloader(recorder, known_sha256={"w.pth": "0" * 64}).fetch(entry, tmp_path)
    assert_nothing_installed(tmp_path, "w.pth")
    assert downloader(recorder, known_sha256={"w.pth": sha(data)}).fetch(entry, tmp_path).read_bytes() == data


def test_redirect_to_another_scheme_is_refused(server, recorder, tmp_path):
    data = payload(seed=21)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(redirect="ftp://127.0.0.1/m.bin"))
    with pytest.raises(DownloadError, match="only http:// and https://"):
        downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/m.bin", "http://2130706434:{port}/m.bin",
                                    "http://[::1]:{port}/m.bin", "http://169.254.169.254/latest/meta-data/",
                                    "http://10.0.0.1/m.bin", "http://0.0.0.0:{port}/m.bin"])
def test_redirect_to_a_non_public_address_is_refused(server, recorder, tmp_path, target):
    data = payload(seed=22)
    server.add_file("/m.bin", data)
    port = server.base_url.rsplit(":", 1)[1]
    server.fail_next("/m.bin", Fault(redirect=target.format(port=port)))
    with pytest.raises(DownloadError, match="refused to download model.dat") as caught:
        downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path)
    assert "address" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_redirects_to_the_configured_host_are_allowed_but_bounded(server, recorder, tmp_path):
    data = payload(seed=23)
    server.add_file("/m.bin", data)
    port = server.base_url.rsplit(":", 1)[1]
    server.fail_next("/m.bin", Fault(redirect=f"http://localhost:{port}/m.bin"))  # the same loopback mirror
    entry = entry_for(server.url("/m.bin"), data)
    assert downloader(recorder).fetch(entry, tmp_path / "a").read_bytes() == data
    for hop in range(6):
        server.fail_next(f"/hop{hop}", Fault(redirect=f"/hop{hop + 1}"))
    server.add_file("/hop6", data)
    with pytest.raises(DownloadError, match="HTTP 302"):
        downloader(recorder, max_redirects=5).fetch(entry_for(server.url("/hop0"), data), tmp_path / "b")
    for hop in range(6):
        server.fail_next(f"/hop{hop}", Fault(redirect=f"/hop{hop + 1}"))
    assert downloader(recorder, max_redirects=6).fetch(entry_for(server.url("/hop0"), data),
                                                        tmp_path / "c").read_bytes() == data


@pytest.mark.parametrize("known_size", [True, False])
@pytest.mark.parametrize("content_range", ["bytes 30000-65535/99999", "bytes 30000-65535/*",
                                           "bytes 30000-40000/65536"])
def test_resume_with_a_wrong_content_range_restarts_from_zero(server, recorder, tmp_path, known_size,
                                                              content_range):
    data = payload(seed=24)
    server.add_file("/m.bin", data)
    (tmp_path / "model.dat.part").write_bytes(data[:30_000])
    server.fail_next("/m.bin", Fault(content_range=content_range))
    entry = entry_for(server.url("/m.bin"), data, known_size=known_size, known_sha=False)
    path = downloader(recorder).fetch(entry, tmp_path)
    assert path.read_bytes() == data
    first, second = server.requests_for("/m.bin")
    assert first.header("Range") == "bytes=30000-" and second.header("Range") is None


def test_resume_after_a_drop_checks_the_total_the_server_announced_first(server, recorder, tmp_path):
    data = payload(seed=25)
    server.add_file("/m.bin", data)
    server.fail_next("/m.bin", Fault(drop_after=10_000), Fault(content_range=f"bytes 10000-{SIZE - 1}/{SIZE + 7}"))
    entry = entry_for(server.url("/m.bin"), data, known_size=False, known_sha=False)
    assert downloader(recorder).fetch(entry, tmp_path).read_bytes() == data
    ranges = [r.header("Range") for r in server.requests_for("/m.bin")]
    assert ranges == [None, "bytes=10000-", None]


# ----------------------------------------------------------------------------------- bounded waits and progress


@pytest.fixture()
def silent_server():
    """A loopback port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_default_timeouts_bound_a_dead_mirror_to_30_seconds():
    default = Downloader(environ={})
    assert default.timeout <= default.stall_timeout <= 30


def test_a_mirror_that_accepts_but_never_answers_fails_within_the_stall_timeout(silent_server, tmp_path):
    data = payload(seed=30)
    # many retries with real waits: only the stall budget can end this quickly
    loader = Downloader(timeout=0.4, stall_timeout=1.5, retries=20, backoff=0.1, environ={})
    started = time.monotonic()
    with pytest.raises(DownloadError, match="no data for") as caught:
        loader.fetch(entry_for(silent_server + "/m.bin", data), tmp_path)
    elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 2.5, elapsed
    assert "timed out" in str(caught.value)
    assert not (tmp_path / "model.dat").exists()


def test_progress_reports_speed_and_eta_to_the_callers_listener_too(server, recorder, tmp_path):
    data = payload(seed=31)
    server.add_file("/m.bin", data)
    mine: list[DownloadProgress] = []
    downloader(recorder).fetch(entry_for(server.url("/m.bin"), data), tmp_path, progress=mine.append)
    assert [e.downloaded for e in mine] == [e.downloaded for e in recorder.events]
    assert mine[-1].done and mine[-1].eta_seconds is None
    measured = [e for e in mine if e.bytes_per_second is not None and not e.done]
    assert all(e.bytes_per_second > 0 and e.eta_seconds >= 0 for e in measured)
    assert DownloadProgress("a.bin", 1, 2, False).bytes_per_second is None  # old positional form still works


def test_fetch_missing_tries_every_file_and_skips_a_dead_host(server, silent_server, tmp_path):
    good, bad = payload(seed=32), payload(seed=33)
    server.add_file("/good.bin", good)
    catalogue = {
        "dead1.bin": entry_for(silent_server + "/1.bin", bad, name="dead1.bin"),
        "missing.bin": entry_for(server.url("/missing.bin"), bad, name="missing.bin"),
        "good.dat": entry_for(server.url("/good.bin"), good, name="good.dat"),
        "dead2.bin": entry_for(silent_server + "/2.bin", bad, name="dead2.bin"),
    }
    folders = ModelFolders.default(tmp_path)
    loader = Downloader(timeout=0.3, stall_timeout=0.8, retries=1, backoff=0.0, environ={})
    started = time.monotonic()
    failures = loader.fetch_missing(list(catalogue), folders, catalogue)
    assert time.monotonic() - started < 3.0  # the dead host is waited for once
    assert [f.entry.name for f in failures] == ["dead1.bin", "missing.bin", "dead2.bin"]
    assert "404" in str(failures[1].error) and "not tried" in str(failures[2].error)
    assert failures[0].folder == tmp_path / "checkpoints" and failures[0].url.endswith("/1.bin")
    assert (tmp_path / "checkpoints" / "good.dat").read_bytes() == good
