"""Wildcards ``__name__`` and arrays ``[[a, b]]`` (§1.10)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from foci.text.wildcards import (
    MAX_WILDCARD_PASSES,
    SHIPPED_WILDCARDS_DIR,
    WildcardError,
    WildcardLibrary,
    apply_arrays,
    read_wildcard_lines,
)


def _folder(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def lib(tmp_path: Path) -> WildcardLibrary:
    folder = _folder(tmp_path / "wc", {
        "animal.txt": "cat\ndog\n\nowl\nfox\n",
        "color.txt": "red\nblue\ngreen\n",
        "sub/deep/scene.txt": "a __color__ __animal__\n",
        "loop.txt": "__loop__\n",
        "blank.txt": "\n\n",
        "spaces.txt": "one\n  \ntwo\n",
    })
    return WildcardLibrary.load([folder], include_shipped=False)


def test_names_and_words(lib: WildcardLibrary) -> None:
    assert lib.names() == ["animal", "blank", "color", "loop", "scene", "spaces"]
    assert lib.words("animal") == ["cat", "dog", "owl", "fox"]
    assert lib.words("spaces") == ["one", "  ", "two"]  # only empty lines are dropped, exactly as Fooocus
    assert lib.words("nope") == []


def test_random_choice_matches_python_random(lib: WildcardLibrary) -> None:
    rng = random.Random(1234)
    reference = random.Random(1234)
    expected_1 = reference.choice(["cat", "dog", "owl", "fox"])
    expected_2 = reference.choice(["cat", "dog", "owl", "fox"])
    expected_3 = reference.choice(["red", "blue", "green"])
    text = lib.expand("a __animal__ and a __animal__ in __color__", rng)
    assert text == f"a {expected_1} and a {expected_2} in {expected_3}"
    # The rng continues from exactly where the reference is.
    assert rng.random() == reference.random()


def test_fixed_seed_golden(lib: WildcardLibrary) -> None:
    assert lib.expand("__animal__", random.Random(0)) == ["cat", "dog", "owl", "fox"][random.Random(0).randrange(4)]
    assert [lib.expand("__color__", random.Random(seed)) for seed in range(4)] == [
        random.Random(seed).choice(["red", "blue", "green"]) for seed in range(4)]


def test_nested_and_recursive_folders(lib: WildcardLibrary) -> None:
    reference = random.Random(7)
    # Pass 1 replaces __scene__, pass 2 its __color__ then __animal__.
    reference.choice(["a __color__ __animal__"])
    color = reference.choice(["red", "blue", "green"])
    animal = reference.choice(["cat", "dog", "owl", "fox"])
    assert lib.expand("__scene__!", random.Random(7)) == f"a {color} {animal}!"


def test_read_in_order(lib: WildcardLibrary) -> None:
    rng = random.Random(0)
    state = rng.getstate()
    assert lib.expand("__animal__ __color__", rng, read_in_order=True, image_index=5) == "dog green"
    assert rng.getstate() == state  # no draw in order mode


def test_missing_and_empty_become_bare_words(lib: WildcardLibrary, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="foci.text.wildcards"):
        assert lib.expand("__nope__ and __nope__, __blank__", random.Random(0)) == "nope and nope, blank"
    assert "__nope__" in caplog.text
    assert lib.expand("no wildcards _here_ or ___", random.Random(0)) == "no wildcards _here_ or ___"
    assert lib.expand("__with-dash__ __Ünï__", random.Random(0)) == "with-dash Ünï"


def test_pass_limit(lib: WildcardLibrary) -> None:
    rng = random.Random(3)
    assert lib.expand("x __loop__ y", rng) == "x __loop__ y"
    reference = random.Random(3)
    for _ in range(MAX_WILDCARD_PASSES):
        reference.choice(["__loop__"])
    assert rng.getstate() == reference.getstate()


def test_shipped_lists_and_user_override(tmp_path: Path) -> None:
    shipped = WildcardLibrary.load()
    for name in ("animal", "color", "extended-color", "flower", "color_flower", "nationality", "artist_style",
                 "artist"):
        assert name in shipped.names()
        words = shipped.words(name)
        assert len(words) >= 20 and len(set(words)) == len(words), name
        assert all(word == word.strip() and "__" not in word for word in words), name
    assert shipped.path("animal") == SHIPPED_WILDCARDS_DIR / "animal.txt"
    user = _folder(tmp_path / "user", {"nested/color.txt": "octarine\n", "color.txt": "ultraviolet\n"})
    library = WildcardLibrary.load([user])
    # The user folder wins over the shipped list; inside a folder the shallowest file wins.
    assert library.words("color") == ["ultraviolet"]
    assert library.words("animal") == shipped.words("animal")
    assert WildcardLibrary.load([tmp_path / "absent"]).names() == shipped.names()


def test_undecodable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(WildcardError, match="bad.txt"):
        read_wildcard_lines(path)
    assert read_wildcard_lines(tmp_path / "missing.txt") == []


def test_bom_blank_and_duplicate_lines_are_kept_like_fooocus(tmp_path: Path) -> None:
    """Fooocus reads ``open(path, encoding='utf-8').read().splitlines()`` and drops only ``''`` lines: a UTF-8
    byte-order mark is not stripped (it stays in the first line, and a BOM-only first line is a choice of its
    own), whitespace-only and duplicate lines stay. ``rng.choice`` over that exact list decides the word."""
    folder = tmp_path / "wc"
    folder.mkdir()
    (folder / "bom.txt").write_bytes("\ufeffalpha\r\nbeta".encode())
    (folder / "season.txt").write_bytes("\ufeff\nspring\n\nsummer\r\nsummer\n  \nwinter\n\n".encode())
    assert read_wildcard_lines(folder / "bom.txt") == ["\ufeffalpha", "beta"]
    season = ["\ufeff", "spring", "summer", "summer", "  ", "winter"]
    assert read_wildcard_lines(folder / "season.txt") == season
    bom = ["\ufeffalpha", "beta"]
    lib = WildcardLibrary.load([folder], include_shipped=False)
    for seed in range(12):
        reference = random.Random(seed)
        expected = reference.choice(season) + " in " + reference.choice(bom)
        assert lib.expand("__season__ in __bom__", random.Random(seed)) == expected
    in_order = [lib.expand("__season__", random.Random(0), read_in_order=True, image_index=i) for i in range(7)]
    assert in_order == [*season, season[0]]


@pytest.mark.parametrize(("index", "expected"), [
    (0, "a x car"), (1, "a  y car"), (2, "a  z car"), (3, "a x car"), (-1, "a  z car")])
def test_single_array(index: int, expected: str) -> None:
    assert apply_arrays("a [[x, y, z]] car", index) == expected


def test_arrays_mixed_radix_first_fastest() -> None:
    text = "[[a,b]]-[[1,2,3]]"
    assert [apply_arrays(text, i) for i in range(7)] == ["a-1", "b-1", "a-2", "b-2", "a-3", "b-3", "a-1"]
    assert apply_arrays("[[a,b]] [[a,b]]", 2) == "a b"
    assert apply_arrays("no arrays [x] [[", 4) == "no arrays [x] [["
    assert apply_arrays("[[]] and [[solo]]", 3) == " and solo"
