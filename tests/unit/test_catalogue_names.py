"""Every model file Foci asks the downloader for is a catalogue name, and every catalogue URL can be mirrored."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from foci.engine.engine import EXPANSION_FILES
from foci.files.downloads import (
    FEATURE_FILES,
    PRESETS,
    Downloader,
    load_catalogue,
    parse_mirrors,
    required_files,
)
from foci.settings.performance import performance_lora_names


def test_names_the_engine_requests_are_in_the_catalogue() -> None:
    catalogue = load_catalogue()
    requested = {*EXPANSION_FILES, *performance_lora_names()}
    requested.update(name for names in FEATURE_FILES.values() for name in names)
    for preset in PRESETS:
        requested.update(required_files(preset))
    assert sorted(requested - set(catalogue)) == []
    assert catalogue["fooocus_expansion.bin"].file_name == "pytorch_model.bin"
    assert catalogue["fooocus_expansion_positive.txt"].file_name == "positive.txt"


def test_every_catalogue_origin_resolves_through_a_mirror() -> None:
    catalogue = load_catalogue()
    origins = {f"{urlsplit(e.url).scheme}://{urlsplit(e.url).netloc}" for e in catalogue.values()}
    assert "https://huggingface.co" in origins and "https://raw.githubusercontent.com" in origins
    mirrors = {origin: f"http://127.0.0.1:9/{index}" for index, origin in enumerate(sorted(origins))}
    downloader = Downloader(mirrors=mirrors, environ={})
    for entry in catalogue.values():
        resolved = downloader.resolve_url(entry.url)
        assert resolved.startswith("http://127.0.0.1:9/"), entry.name
        assert resolved.endswith(urlsplit(entry.url).path)


def test_hf_mirror_and_per_origin_mirrors_combine() -> None:
    downloader = Downloader(mirror="http://hf.local/", environ={
        "FOCI_MIRRORS": "https://raw.githubusercontent.com=http://gh.local/raw, github.com=http://gh.local"})
    assert downloader.resolve_url("https://huggingface.co/a/b.bin") == "http://hf.local/a/b.bin"
    assert downloader.resolve_url("https://raw.githubusercontent.com/x/y.txt") == "http://gh.local/raw/x/y.txt"
    assert downloader.resolve_url("https://github.com/r/releases/z.pth") == "http://gh.local/r/releases/z.pth"
    assert downloader.resolve_url("https://example.org/z") == "https://example.org/z"
    assert downloader.resolve_url("https://huggingface.company/z") == "https://huggingface.company/z"


@pytest.mark.parametrize("text", ["https://a.org", "https://a.org=ftp://b", "https://a.org/path=http://b"])
def test_bad_mirror_pairs_are_refused(text: str) -> None:
    from foci.files.downloads import DownloadError

    with pytest.raises(DownloadError, match="mirror"):
        parse_mirrors(text)
