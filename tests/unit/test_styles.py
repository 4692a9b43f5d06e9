"""Style names, the shipped style library, user overrides and errors (§1.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foci.text.styles import (
    FOOOCUS_V2,
    PROMPT_PLACEHOLDER,
    RANDOM_STYLE,
    SHIPPED_STYLES_DIR,
    Style,
    StyleError,
    StyleLibrary,
    normalize_style_name,
    read_style_file,
)

# Every style a Fooocus preset names (§1.12) plus the default selection (§1.4).
PRESET_STYLES = ["Fooocus Enhance", "Fooocus Sharp", "Fooocus Semi Realistic", "Fooocus Masterpiece",
                 "Fooocus Photograph", "Fooocus Negative", "Fooocus Pony", "Fooocus Cinematic"]


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load()


def _write(folder: Path, name: str, entries: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.mark.parametrize(("raw", "expected"), [
    ("sai-anime", "SAI Anime"),
    ("mre-dark-cyberpunk", "MRE Dark Cyberpunk"),
    ("3d-model", "3D Model"),
    ("artstyle (surrealist)", "Artstyle (Surrealist)"),
    ("FOOOCUS-SHARP", "Fooocus Sharp"),
    ("Fooocus V2", "Fooocus V2"),
    ("random style", "Random Style"),
    ("misc  double", "Misc  Double"),          # spaces are kept, not collapsed
    ("saint", "SAInt"),                       # the blind substring repair, exactly as Fooocus
    ("", ""),
])
def test_normalize_style_name(raw: str, expected: str) -> None:
    assert normalize_style_name(raw) == expected


def test_shipped_library_size_names_and_templates(library: StyleLibrary) -> None:
    raw_names = []
    for path in sorted(SHIPPED_STYLES_DIR.glob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8")):
            assert set(entry) <= {"name", "prompt", "negative_prompt"}, entry
            raw_names.append(entry["name"])
    assert len(raw_names) >= 100
    assert len(set(raw_names)) == len(raw_names), "duplicate style names in the shipped files"
    assert [normalize_style_name(name) for name in raw_names] == raw_names, "shipped names must be normalised"
    assert library.template_names() == raw_names
    assert len(library) == len(raw_names)
    for name in raw_names:
        style = library.get(name)
        assert style.negative_prompt.strip(), f"{name} has no negative prompt"
        if style.prompt:
            assert style.prompt.count(PROMPT_PLACEHOLDER) == 1, name
        else:
            assert style.negative_prompt, f"{name} is empty"


def test_preset_styles_exist_and_fooocus_shapes(library: StyleLibrary) -> None:
    for name in PRESET_STYLES:
        assert name in library.template_names()
    for negative_only in ("Fooocus Enhance", "Fooocus Semi Realistic", "Fooocus Negative"):
        assert library.get(negative_only).prompt == ""
    enhance = library.get("Fooocus Enhance").negative_prompt
    weights = [float(part.split(":")[1].rstrip(")")) for part in enhance.split(", ") if part.startswith("(")]
    assert weights and all(1.1 <= weight <= 1.4 for weight in weights)
    pony = library.get("Fooocus Pony")
    assert pony.prompt.startswith("score_9, score_8_up, score_7_up, ") and pony.prompt.endswith("{prompt}")
    assert pony.negative_prompt.startswith("score_6, score_5, score_4")
    assert library.get("Fooocus Sharp").has_placeholder


def test_names_order_and_lookup(library: StyleLibrary) -> None:
    names = library.names()
    assert names[:3] == [FOOOCUS_V2, RANDOM_STYLE, "Fooocus Enhance"]
    assert len(names) == len(library) + 2
    assert library.get("fooocus-sharp") is library.get("Fooocus Sharp")
    assert "fooocus v2" in library and "Random Style" in library and "No Such Style" not in library
    assert library.validate(["fooocus-v2", "fooocus enhance", "FOOOCUS-SHARP"]) == [
        FOOOCUS_V2, "Fooocus Enhance", "Fooocus Sharp"]


def test_unknown_style_suggests_close_match(library: StyleLibrary) -> None:
    with pytest.raises(StyleError, match=r"unknown style 'Fooocus Sharpe'.*'Fooocus Sharp'"):
        library.validate([FOOOCUS_V2, "Fooocus Sharpe"])
    with pytest.raises(StyleError, match="unknown style 'qqqq'$"):
        library.get("qqqq")
    with pytest.raises(StyleError, match="special style, not a template"):
        library.get(FOOOCUS_V2)
    with pytest.raises(StyleError, match="list of names"):
        library.validate("Fooocus Sharp")  # type: ignore[arg-type]


def test_apply_substitutes_and_splits_lines() -> None:
    library = StyleLibrary([Style("Two Lines", "first {prompt}\nsecond {prompt}", "bad\n\nworse"),
                            Style("Negative Only", "", "ugly")])
    assert library.apply("two lines", "a cat") == (["first a cat", "second a cat"], ["bad", "", "worse"])
    assert library.apply("Negative Only", "a cat") == ([], ["ugly"])
    # A prompt containing the placeholder text is not substituted again.
    assert library.apply("Two Lines", "{prompt}")[0] == ["first {prompt}", "second {prompt}"]


def test_user_folder_overrides_shipped_and_appends(tmp_path: Path) -> None:
    shipped = StyleLibrary.load()
    _write(tmp_path / "a", "mine.json", [
        {"name": "fooocus-sharp", "prompt": "my sharp {prompt}"},
        {"name": "zz-my-style", "prompt": "{prompt}, mine", "negative_prompt": "not mine"},
    ])
    _write(tmp_path / "b", "later.json", [{"name": "ZZ My Style", "prompt": "{prompt}, later"}])
    library = StyleLibrary.load([tmp_path / "a", tmp_path / "missing", tmp_path / "b"])
    assert library.get("Fooocus Sharp") == Style("Fooocus Sharp", "my sharp {prompt}", "")
    assert library.get("Zz My Style").prompt == "{prompt}, later"
    # An override keeps the shipped position; a new style comes last.
    assert library.template_names()[:-1] == shipped.template_names()
    assert library.template_names()[-1] == "Zz My Style"
    assert library.warnings == ()


def test_bad_user_file_is_reported_without_hiding_others(tmp_path: Path) -> None:
    folder = tmp_path / "styles"
    _write(folder, "a_good.json", [{"name": "Good One", "prompt": "{prompt} good"}])
    (folder / "b_broken.json").write_text("[{not json", encoding="utf-8")
    _write(folder, "c_good.json", [{"name": "Good Two", "negative_prompt": "x"}])
    library = StyleLibrary.load([folder])
    assert "Good One" in library.template_names() and "Good Two" in library.template_names()
    assert len(library.warnings) == 1 and "b_broken.json" in library.warnings[0]


@pytest.mark.parametrize(("content", "message"), [
    ('{"name": "x"}', "JSON list"),
    ('[{"prompt": "{prompt}"}]', "entry 0 needs a non-empty string 'name'"),
    ('[{"name": "ok"}, "text"]', "entry 1"),
    ('[{"name": "x", "prompt": 3}]', "'prompt' of style 'x' must be a string"),
    ("[", "cannot read style file"),
])
def test_read_style_file_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StyleError, match=message) as caught:
        read_style_file(path)
    assert str(path) in str(caught.value)


def test_read_style_file_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.json", [{"name": "sai-thing", "prompt": None}, {"name": "x", "negative_prompt": "n"}])
    assert read_style_file(path) == [Style("SAI Thing"), Style("X", "", "n")]
