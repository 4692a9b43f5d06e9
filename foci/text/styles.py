"""Prompt styles: named templates that wrap the user's prompt and add negative text (§1.4).

A style file is a JSON list of ``{"name": ..., "prompt": ..., "negative_prompt": ...}`` objects (Fooocus's
``sdxl_styles`` format). ``{prompt}`` in ``prompt`` is replaced by the user's prompt; both texts are split into
lines, each line becoming its own encoded item. The shipped library lives in ``foci/text/data/styles/*.json``;
user folders loaded after it override same-named styles.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FOOOCUS_V2 = "Fooocus V2"
RANDOM_STYLE = "Random Style"
PROMPT_PLACEHOLDER = "{prompt}"
SHIPPED_STYLES_DIR = Path(__file__).parent / "data" / "styles"


class StyleError(ValueError):
    """An unknown style name or a malformed style file."""


@dataclass(frozen=True)
class Style:
    """One template style; ``prompt`` may contain ``{prompt}``, either text may span several lines."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""

    @property
    def has_placeholder(self) -> bool:
        """Whether the positive template inserts the user's prompt itself."""
        return PROMPT_PLACEHOLDER in self.prompt


def normalize_style_name(name: str) -> str:
    """Fooocus's style-name normalisation (§1.4).

    Dashes become spaces, every space-separated word gets an upper-case first letter and a lower-case rest,
    then the fixed substring repairs ``3d→3D``, ``Sai→SAI``, ``Mre→MRE`` and ``(s→(S`` are applied (blindly,
    exactly like Fooocus, so e.g. ``saint`` becomes ``SAInt``).
    """
    words = str(name).replace("-", " ").split(" ")
    text = " ".join(word[:1].upper() + word[1:].lower() for word in words)
    for old, new in (("3d", "3D"), ("Sai", "SAI"), ("Mre", "MRE"), ("(s", "(S")):
        text = text.replace(old, new)
    return text


def read_style_file(path: Path) -> list[Style]:
    """Parse one style JSON file; any problem raises :class:`StyleError` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StyleError(f"cannot read style file {path}: {error}") from error
    if not isinstance(data, list):
        raise StyleError(f"style file {path} must hold a JSON list of styles, got {type(data).__name__}")
    styles: list[Style] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise StyleError(f"style file {path}: entry {index} needs a non-empty string 'name'")
        texts = {}
        for key in ("prompt", "negative_prompt"):
            value = entry.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise StyleError(f"style file {path}: {key!r} of style {entry['name']!r} must be a string")
            texts[key] = value
        styles.append(Style(normalize_style_name(entry["name"]), texts["prompt"], texts["negative_prompt"]))
    return styles


def _json_files(folder: Path) -> list[Path]:
    """The ``*.json`` files directly inside ``folder``, sorted case-insensitively by name (as Fooocus lists
    them); none if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((path for path in folder.glob("*.json") if path.is_file()),
                  key=lambda path: (path.name.casefold(), path.name))


@dataclass(frozen=True)
class StyleImport:
    """What :func:`import_style_files` did: files copied (name → style count), left alone and refused."""

    target: Path
    copied: dict[str, int]
    unchanged: list[str]
    kept: list[str]  # a different file of that name was already in the target (copied only with overwrite)
    refused: dict[str, str]  # file name → why (not JSON, not a list of styles, …)
    style_names: list[str]


def import_style_files(source: Path, target: Path, *, overwrite: bool = False) -> StyleImport:
    """Copy the valid style files of a Fooocus install (``source`` or its ``sdxl_styles/``) into ``target``, the
    user styles folder. Every ``*.json`` is validated first; a broken one is refused with the reason, an existing
    different file of the same name is kept unless ``overwrite``. Raises :class:`StyleError` when ``source``
    holds no style files."""
    source = Path(source)
    folder = source / "sdxl_styles" if (source / "sdxl_styles").is_dir() else source
    files = _json_files(folder)
    if not files:
        raise StyleError(f"no style files (*.json) in {folder}: give a Fooocus folder or its sdxl_styles folder")
    result = StyleImport(Path(target), {}, [], [], {}, [])
    for path in files:
        try:
            styles = read_style_file(path)
        except StyleError as error:
            result.refused[path.name] = str(error)
            continue
        destination = Path(target) / path.name
        data = path.read_bytes()
        if destination.is_file() and destination.read_bytes() == data:
            result.unchanged.append(path.name)
        elif destination.exists() and not overwrite:
            result.kept.append(path.name)
            continue
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
            result.copied[path.name] = len(styles)
        result.style_names.extend(style.name for style in styles)
    return result


class StyleLibrary:
    """An ordered, immutable set of template styles plus the two special names."""

    def __init__(self, styles: Sequence[Style] = (), warnings: Sequence[str] = (),
                 random_pool_order: Sequence[str] = ()) -> None:
        ordered: dict[str, Style] = {}
        for style in styles:
            # A later definition replaces the text but keeps the first position (dict semantics, as Fooocus).
            ordered[style.name] = style
        self._styles = ordered
        self.warnings: tuple[str, ...] = tuple(warnings)
        # Fooocus's own load order (user files before its shipped ones) decides which style a seed picks.
        pool = dict.fromkeys(name for name in random_pool_order if name in ordered)
        self._random_pool = list(pool) + [name for name in ordered if name not in pool]

    @classmethod
    def load(cls, user_folders: Sequence[Path] = ()) -> StyleLibrary:
        """Shipped styles first, then each user folder's ``*.json`` (sorted); later files win per name.

        :meth:`random_style_pool` keeps Fooocus's order instead, user styles before the shipped ones.

        A malformed shipped file raises :class:`StyleError`; a malformed user file is skipped and reported in
        :attr:`warnings` so that it cannot hide the other styles.
        """
        styles: list[Style] = []
        for path in _json_files(SHIPPED_STYLES_DIR):
            styles.extend(read_style_file(path))
        shipped = [style.name for style in styles]
        warnings: list[str] = []
        for folder in user_folders:
            for path in _json_files(Path(folder)):
                try:
                    styles.extend(read_style_file(path))
                except StyleError as error:
                    warnings.append(str(error))
        user = [style.name for style in styles[len(shipped):]]
        return cls(styles, warnings, random_pool_order=user + shipped)

    def __len__(self) -> int:
        return len(self._styles)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        normalised = normalize_style_name(name)
        return normalised in self._styles or normalised in (FOOOCUS_V2, RANDOM_STYLE)

    def template_names(self) -> list[str]:
        """Template style names in library order."""
        return list(self._styles)

    def random_style_pool(self) -> list[str]:
        """The templates ``Random Style`` draws from, in Fooocus's load order (§1.4): user styles first (files
        sorted case-insensitively), then the shipped ones; ``rng.choice`` over this list picks the style."""
        return list(self._random_pool)

    def names(self) -> list[str]:
        """Every legal name: ``Fooocus V2``, ``Random Style``, then all templates in library order."""
        return [FOOOCUS_V2, RANDOM_STYLE, *self._styles]

    def _unknown(self, name: str) -> StyleError:
        close = difflib.get_close_matches(normalize_style_name(name), self.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(match) for match in close)}?" if close else ""
        return StyleError(f"unknown style {name!r}{hint}")

    def get(self, name: str) -> Style:
        """The template style called ``name`` (normalised); the special names are not templates."""
        normalised = normalize_style_name(name)
        style = self._styles.get(normalised)
        if style is None:
            if normalised in (FOOOCUS_V2, RANDOM_STYLE):
                raise StyleError(f"{normalised!r} is a special style, not a template")
            raise self._unknown(name)
        return style

    def apply(self, name: str, prompt: str) -> tuple[list[str], list[str]]:
        """Positive lines (``{prompt}`` substituted) and negative lines of one style; empty lines are kept."""
        style = self.get(name)
        return style.prompt.replace(PROMPT_PLACEHOLDER, prompt).splitlines(), style.negative_prompt.splitlines()

    def validate(self, names: Sequence[str]) -> list[str]:
        """Normalise each selected name, keeping order; any unknown name raises :class:`StyleError`."""
        if isinstance(names, str):
            raise StyleError(f"styles must be a list of names, got the string {names!r}")
        legal = set(self.names())
        result = []
        for name in names:
            normalised = normalize_style_name(name)
            if normalised not in legal:
                raise self._unknown(name)
            result.append(normalised)
        return result
