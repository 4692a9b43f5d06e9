"""Wildcards ``__name__`` and arrays ``[[a, b, c]]`` in prompts (§1.10).

A wildcard is replaced by one non-empty line of ``name.txt`` found anywhere under a wildcard folder, chosen with
the image's seeded ``random.Random`` (or line ``image_index % len`` when reading in order). Replacements may
contain further wildcards; expansion runs up to 64 passes. An unknown name becomes the bare word. Arrays pick an
element by image index, several arrays counting in mixed radix with the first one varying fastest.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

WILDCARD_PATTERN = r"__([\w-]+)__"
MAX_WILDCARD_PASSES = 64
SHIPPED_WILDCARDS_DIR = Path(__file__).parent / "data" / "wildcards"

_WILDCARD = re.compile(WILDCARD_PATTERN)
_ARRAY = re.compile(r"\[\[(.*?)\]\]")
_log = logging.getLogger(__name__)


class WildcardError(ValueError):
    """A wildcard file that exists but cannot be read as UTF-8 text."""


def _txt_files(folder: Path) -> list[Path]:
    """``*.txt`` files anywhere under ``folder``: shallower first, then by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [path for path in folder.rglob("*") if path.suffix.lower() == ".txt" and path.is_file()]
    return sorted(found, key=lambda path: (len(path.relative_to(folder).parts), path.relative_to(folder).as_posix()))


def read_wildcard_lines(path: Path) -> list[str]:
    """The non-empty lines of a wildcard file, exactly as Fooocus reads them.

    The file is decoded as plain UTF-8, so a byte-order mark stays in the first line (``"\ufeffspring"``; a
    BOM-only first line is a choice of its own); lines are neither stripped nor de-duplicated; only lines that
    are exactly empty are dropped. The CLIP tokenizer later drops the BOM character from the prompt.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise WildcardError(f"wildcard file {path} is not UTF-8 text: {error}") from error
    except OSError:
        return []
    return [line for line in text.splitlines() if line != ""]


class WildcardLibrary:
    """Wildcard names mapped to their files; files are read when a name is used."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)

    @classmethod
    def load(cls, folders: Sequence[Path] = (), *, include_shipped: bool = True) -> WildcardLibrary:
        """Shipped ``foci/text/data/wildcards`` (unless ``include_shipped`` is false), then ``folders`` in order.

        Files are found recursively by stem (``**/name.txt``). A later folder overrides an earlier one for the
        same name; inside one folder the shallowest, then alphabetically first, file wins. Missing folders are
        skipped.
        """
        roots = [SHIPPED_WILDCARDS_DIR] if include_shipped else []
        roots.extend(Path(folder) for folder in folders)
        files: dict[str, Path] = {}
        for root in roots:
            in_this_root: dict[str, Path] = {}
            for path in _txt_files(root):
                in_this_root.setdefault(path.stem, path)
            files.update(in_this_root)
        return cls(files)

    def names(self) -> list[str]:
        """All wildcard names, sorted."""
        return sorted(self._files)

    def path(self, name: str) -> Path | None:
        """The file behind ``name``, or None."""
        return self._files.get(name)

    def words(self, name: str) -> list[str]:
        """The choices for ``name``; empty when the name is unknown or its file has no non-empty line."""
        path = self._files.get(name)
        return [] if path is None else read_wildcard_lines(path)

    def expand(self, text: str, rng: random.Random, *, read_in_order: bool = False, image_index: int = 0) -> str:
        """Replace every ``__name__`` in ``text``, nested up to :data:`MAX_WILDCARD_PASSES` passes.

        Each pass finds all placeholders left to right and replaces them one at a time (first occurrence),
        drawing ``rng.choice(words)`` for each — the same draws, in the same order, as Fooocus. A name without
        words replaces all its occurrences by the bare name. Text still holding placeholders after the last
        pass is returned as it is.
        """
        for _ in range(MAX_WILDCARD_PASSES):
            placeholders = _WILDCARD.findall(text)
            if not placeholders:
                return text
            for name in placeholders:
                token = f"__{name}__"
                words = self.words(name)
                if not words:
                    _log.warning("wildcard %r has no file or no lines; using %r as a word", token, name)
                    text = text.replace(token, name)
                    continue
                word = words[image_index % len(words)] if read_in_order else rng.choice(words)
                text = text.replace(token, word, 1)
        if _WILDCARD.search(text):
            _log.warning("wildcards still unexpanded after %d passes: %s", MAX_WILDCARD_PASSES, text)
        return text


def apply_arrays(text: str, image_index: int) -> str:
    """Replace each ``[[a, b, c]]`` by one comma-separated element chosen by ``image_index``.

    Arrays count in mixed radix, the first array varying fastest; the index wraps modulo the product of the
    array sizes. Elements are not stripped (``[[a, b]]`` at index 1 gives ``" b"``), as in Fooocus.
    """
    bodies = _ARRAY.findall(text)
    if not bodies:
        return text
    options = [body.split(",") for body in bodies]
    index = image_index % math.prod(len(choices) for choices in options)
    for body, choices in zip(bodies, options, strict=True):
        text = text.replace(f"[[{body}]]", choices[index % len(choices)], 1)
        index //= len(choices)
    return text
