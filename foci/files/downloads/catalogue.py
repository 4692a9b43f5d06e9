"""The catalogue of downloadable model files (§2.24): entries, the files a preset or feature needs, missing files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from foci.files.downloads.errors import CatalogueError
from foci.files.folders import MODEL_KINDS, ModelFolders
from foci.settings.config import preset_performance
from foci.settings.performance import PERFORMANCE_MODES, Performance, PerformanceError, performance_lora_names

ALWAYS = "always"
"""The `presets` tag of files every preset needs (VAE approximations, interposer, prompt expansion)."""

PRESETS: tuple[str, ...] = ("default", "anime", "realistic", "lcm", "lightning", "playground_v2.5", "pony_v6", "sai")
# Files an optional feature pulls on first use (§2.24 "When" column).
FEATURE_FILES: Mapping[str, tuple[str, ...]] = {
    "inpaint_v1": ("fooocus_inpaint_head.pth", "inpaint.fooocus.patch"),
    "inpaint_v2.5": ("fooocus_inpaint_head.pth", "inpaint_v25.fooocus.patch"),
    "inpaint_v2.6": ("fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch"),
    "upscale": ("fooocus_upscaler_s409985e5.bin",),
    "pyracanny": ("control-lora-canny-rank128.safetensors",),
    "cpds": ("fooocus_xl_cpds_128.safetensors",),
    "image_prompt": ("clip_vision_vit_h.safetensors", "fooocus_ip_negative.safetensors",
                     "ip-adapter-plus_sdxl_vit-h.bin"),
    "faceswap": ("clip_vision_vit_h.safetensors", "fooocus_ip_negative.safetensors",
                 "ip-adapter-plus-face_sdxl_vit-h.bin", "detection_Resnet50_Final.pth", "parsing_parsenet.pth"),
    "describe_photo": ("model_base_caption_capfilt_large.pth",),
    "describe_anime": ("wd-v1-4-moat-tagger-v2.onnx", "wd-v1-4-moat-tagger-v2.csv"),
    "safety_checker": ("stable-diffusion-safety-checker.bin",),
    "sam_vit_b": ("sam_vit_b_01ec64.pth", "groundingdino_swint_ogc.pth"),
    "sam_vit_l": ("sam_vit_l_0b3195.pth", "groundingdino_swint_ogc.pth"),
    "sam_vit_h": ("sam_vit_h_4b8939.pth", "groundingdino_swint_ogc.pth"),
}


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


_ENTRY_KEYS = frozenset({"name", "url", "folder", "size", "sha256", "licence", "presets", "save_as", "note"})


@dataclass(frozen=True)
class CatalogueEntry:
    """One downloadable model file."""

    name: str
    url: str
    folder: str  # a model kind (foci.files.folders.MODEL_KINDS)
    size: int | None
    sha256: str | None
    licence: str
    presets: tuple[str, ...] = ()
    save_as: str | None = None

    @property
    def file_name(self) -> str:
        """The name the file has on disk (`save_as`, else `name`)."""
        return self.save_as or self.name


def load_catalogue(path: str | Path | None = None) -> dict[str, CatalogueEntry]:
    """Read a catalogue JSON file (the packaged `foci/files/catalogue.json` by default), validating every entry."""
    if path is None:
        return dict(_packaged_catalogue())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"cannot read catalogue {path}: {exc.strerror or exc}") from exc
    return _parse_catalogue(text, str(path))


@lru_cache(maxsize=1)
def _packaged_catalogue() -> tuple[tuple[str, CatalogueEntry], ...]:
    text = resources.files("foci.files").joinpath("catalogue.json").read_text(encoding="utf-8")
    return tuple(_parse_catalogue(text, "foci/files/catalogue.json").items())


def _parse_catalogue(text: str, source: str) -> dict[str, CatalogueEntry]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"catalogue {source} is not valid JSON: {exc}") from exc
    raw_entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(raw_entries, list):
        raise CatalogueError(f"catalogue {source} must be an object with an 'entries' list")
    catalogue: dict[str, CatalogueEntry] = {}
    for index, raw in enumerate(raw_entries):
        entry = _parse_entry(raw, f"{source} entry {index}")
        if entry.name in catalogue:
            raise CatalogueError(f"catalogue {source}: duplicate name {entry.name!r}")
        catalogue[entry.name] = entry
    return catalogue


def _parse_entry(raw: Any, where: str) -> CatalogueEntry:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where} must be an object")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r}")
    name, url, folder = raw.get("name"), raw.get("url"), raw.get("folder")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise CatalogueError(f"{where}: 'name' must be a plain file name, got {name!r}")
    where = f"{where} ({name})"
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise CatalogueError(f"{where}: 'url' must be an http(s) URL, got {url!r}")
    if folder not in MODEL_KINDS:
        raise CatalogueError(f"{where}: 'folder' must be one of {', '.join(MODEL_KINDS)}, got {folder!r}")
    size, sha256 = raw.get("size"), raw.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise CatalogueError(f"{where}: 'size' must be a positive byte count or null, got {size!r}")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.match(sha256)):
        raise CatalogueError(f"{where}: 'sha256' must be 64 lower-case hex digits or null, got {sha256!r}")
    licence = raw.get("licence")
    if not isinstance(licence, str) or not licence:
        raise CatalogueError(f"{where}: 'licence' must be a non-empty string")
    presets = raw.get("presets", [])
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise CatalogueError(f"{where}: 'presets' must be a list of preset names")
    save_as = raw.get("save_as")
    if save_as is not None and (not isinstance(save_as, str) or not save_as or "/" in save_as or "\\" in save_as):
        raise CatalogueError(f"{where}: 'save_as' must be a plain file name or null, got {save_as!r}")
    return CatalogueEntry(name=name, url=url, folder=folder, size=size, sha256=sha256, licence=licence,
                          presets=tuple(presets), save_as=save_as)


def required_files(preset: str, *, performance: str | None = None,
                   catalogue: Mapping[str, CatalogueEntry] | None = None) -> list[str]:
    """Catalogue names a preset needs for text-to-image, in catalogue order.

    The always-needed files, the preset's own files, and the LoRA of `performance` (default: the preset's own,
    e.g. Extreme Speed for `lcm`); an explicit performance replaces the preset's performance LoRA.
    """
    if preset not in PRESETS:
        raise CatalogueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    try:
        effective = Performance.parse(performance if performance is not None else preset_performance(preset))
    except PerformanceError as error:
        raise CatalogueError(str(error)) from None
    catalogue = load_catalogue() if catalogue is None else catalogue
    performance_loras = performance_lora_names()
    names = [name for name, entry in catalogue.items()
             if name not in performance_loras and (ALWAYS in entry.presets or preset in entry.presets)]
    mode_lora = PERFORMANCE_MODES[effective].lora
    if mode_lora is not None:
        lora = mode_lora[0]
        if lora not in catalogue:
            raise CatalogueError(f"catalogue has no entry {lora!r} for performance {effective.value!r}")
        names.append(lora)
    return names


def feature_files(feature: str) -> list[str]:
    """Catalogue names an optional feature (inpaint_v2.6, upscale, image_prompt, faceswap, …) needs."""
    try:
        return list(FEATURE_FILES[feature])
    except KeyError:
        raise CatalogueError(f"unknown feature {feature!r}; known: {', '.join(FEATURE_FILES)}") from None


def missing_files(names: Sequence[str], folders: ModelFolders,
                  catalogue: Mapping[str, CatalogueEntry] | None = None) -> list[CatalogueEntry]:
    """Catalogue entries among `names` whose file is in none of its kind's folders (no network, no hashing)."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    entries = [_lookup(catalogue, name) for name in names]
    return [entry for entry in entries if folders.find(entry.folder, entry.file_name) is None]


def _lookup(catalogue: Mapping[str, CatalogueEntry], name: str) -> CatalogueEntry:
    try:
        return catalogue[name]
    except KeyError:
        raise CatalogueError(f"unknown model file {name!r}: not in the catalogue") from None
