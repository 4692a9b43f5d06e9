"""Full prompt assembly (§2.2) and inline LoRA tags (§1.10)."""

from __future__ import annotations

import logging
import random

import pytest

from foci.text.prompt_plan import (
    ImagePrompts,
    cleanup_commas,
    extract_inline_loras,
    parse_inline_loras,
    plan_image_prompts,
    split_prompt,
)
from foci.text.prompts import PromptPlan
from foci.text.styles import FOOOCUS_V2, RANDOM_STYLE, Style, StyleError, StyleLibrary
from foci.text.wildcards import WildcardLibrary

DEFAULT_STYLES = [FOOOCUS_V2, "Fooocus Enhance", "Fooocus Sharp"]


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load()


@pytest.fixture(scope="module")
def wildcards(tmp_path_factory: pytest.TempPathFactory) -> WildcardLibrary:
    folder = tmp_path_factory.mktemp("wildcards")
    (folder / "animal.txt").write_text("cat\ndog\nowl\nfox\nyak\n", encoding="utf-8")
    (folder / "color.txt").write_text("red\nblue\ngreen\n", encoding="utf-8")
    return WildcardLibrary.load([folder], include_shipped=False)


def fake_expand(prompt: str, seed: int) -> str:
    return f"{prompt}, expanded {seed}"


def plan(library: StyleLibrary, wildcards: WildcardLibrary, prompt: str, negative: str = "",
         styles: list[str] | None = None, **kwargs) -> ImagePrompts:
    options = {"seed": 7, "image_index": 0, "expand": fake_expand} | kwargs
    return plan_image_prompts(prompt, negative, DEFAULT_STYLES if styles is None else styles,
                              library=library, wildcards=wildcards, **options)


def test_worked_example_default_styles(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    result = plan(library, wildcards, "a cat", seed=12345)
    sharp = library.get("Fooocus Sharp")
    assert result.positive == [sharp.prompt.replace("{prompt}", "a cat"), "a cat, expanded 12345"]
    assert result.positive_top_k == 1
    assert result.negative == [library.get("Fooocus Enhance").negative_prompt, sharp.negative_prompt]
    assert result.negative_top_k == 2
    assert result.expansion == "a cat, expanded 12345" and result.use_expansion
    assert result.styles == ["Fooocus Enhance", "Fooocus Sharp"]
    assert (result.task_prompt, result.task_negative, result.seed) == ("a cat", "", 12345)
    assert result.to_prompt_plan() == PromptPlan(result.positive, result.negative, 1, 2, result.expansion)


def test_multi_line_prompts(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    result = plan(library, wildcards, " a  cat.\n\n, a dog ,\r\nsunset ", "ugly\n\nbad  hands.",
                  styles=["Fooocus Sharp"])
    sharp = library.get("Fooocus Sharp")
    assert result.positive == [sharp.prompt.replace("{prompt}", "a cat"), "a dog", "sunset"]
    assert result.positive_top_k == 3
    assert result.negative == [sharp.negative_prompt, "ugly", "bad hands"]
    assert result.negative_top_k == 3
    assert result.log_positive == "a cat\na dog\nsunset" and result.log_negative == "ugly\nbad hands"
    assert result.expansion == "" and not result.use_expansion


def test_no_style_negative_only_style_and_v2_only(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    bare = plan(library, wildcards, "a cat", styles=[])
    assert (bare.positive, bare.negative, bare.positive_top_k, bare.negative_top_k) == (["a cat"], [""], 1, 1)
    enhance = plan(library, wildcards, "a cat", "blurry", styles=["Fooocus Enhance"])
    assert enhance.positive == ["a cat"]  # no {prompt} anywhere → raw prompt first
    assert enhance.negative == [library.get("Fooocus Enhance").negative_prompt, "blurry"]
    v2 = plan(library, wildcards, "a cat", styles=[FOOOCUS_V2], seed=3)
    assert (v2.positive, v2.positive_top_k, v2.styles) == (["a cat", "a cat, expanded 3"], 1, [])
    without_expander = plan(library, wildcards, "a cat", styles=[FOOOCUS_V2], expand=None)
    assert without_expander.positive == ["a cat"] and without_expander.use_expansion


def test_placeholder_rule_and_multi_line_templates(wildcards: WildcardLibrary) -> None:
    library = StyleLibrary([Style("Wrap", "top {prompt}\nsecond line", "n1\nn2"), Style("Neg", "", "n3"),
                            Style("Fixed", "fixed text", "")])
    both = plan(library, wildcards, "cat", styles=["Neg", "Wrap"])
    assert both.positive == ["top cat", "second line"] and both.negative == ["n3", "n1", "n2"]
    fixed = plan(library, wildcards, "cat", styles=["Fixed", "Neg"])
    assert fixed.positive == ["cat", "fixed text"] and fixed.negative == ["n3"]


def test_empty_prompt(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    def must_not_run(prompt: str, seed: int) -> str:
        raise AssertionError("expansion must be off for an empty prompt")

    styled = plan(library, wildcards, " \n.,\n", styles=DEFAULT_STYLES, expand=must_not_run)
    assert styled.positive == [library.get("Fooocus Sharp").prompt.replace("{prompt}", "")]
    assert not styled.use_expansion and styled.expansion == ""
    bare = plan(library, wildcards, "", styles=[], expand=must_not_run)
    assert (bare.positive, bare.negative, bare.positive_top_k, bare.negative_top_k) == ([""], [""], 1, 1)
    only_negative_style = plan(library, wildcards, "", styles=["Fooocus Negative"])
    assert only_negative_style.positive == [""] and only_negative_style.positive_top_k == 1


def test_wildcards_draw_order(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    animals, colors = ["cat", "dog", "owl", "fox", "yak"], ["red", "blue", "green"]
    reference = random.Random(99)
    main_1, main_2 = reference.choice(animals), reference.choice(animals)
    negative = reference.choice(colors)
    extra_positive = reference.choice(colors)
    extra_negative = reference.choice(animals)
    result = plan(library, wildcards, "a __animal__ and a __animal__\nin __color__", "__color__\nno __animal__",
                  styles=[], seed=99)
    assert result.task_prompt == f"a {main_1} and a {main_2}"
    assert result.positive == [f"a {main_1} and a {main_2}", f"in {extra_positive}"]
    assert result.negative == [negative, f"no {extra_negative}"]


def test_wildcards_in_order(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    result = plan(library, wildcards, "__animal__ __color__", styles=[], image_index=6, read_wildcards_in_order=True)
    assert result.task_prompt == "dog red"


def test_arrays_follow_comma_cleanup(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    # The main line is comma-cleaned before arrays (Fooocus), so "[[red,blue]]" elements gain a leading space.
    texts = [plan(library, wildcards, "a [[red,blue]] car\n[[x,y]]", styles=[], image_index=i).positive
             for i in range(3)]
    assert texts == [["a red car", "[[x,y]]"], ["a  blue car", "[[x,y]]"], ["a red car", "[[x,y]]"]]
    mixed = [plan(library, wildcards, "[[a, b]] [[1, 2, 3]]", styles=[], image_index=i).task_prompt
             for i in (0, 1, 2, 5, 6)]
    assert mixed == ["a 1", " b 1", "a  2", " b  3", "a 1"]


def test_random_style_uses_image_rng_after_wildcards(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    reference = random.Random(2024)
    animal = reference.choice(["cat", "dog", "owl", "fox", "yak"])
    chosen = reference.choice(library.random_style_pool())
    second = reference.choice(library.random_style_pool())
    result = plan(library, wildcards, "__animal__", styles=[RANDOM_STYLE, "random-style"], seed=2024)
    assert result.task_prompt == animal
    assert result.styles == [chosen, second]
    expected_positive = []
    for name in (chosen, second):
        expected_positive += library.apply(name, animal)[0]
    if not any("{prompt}" in library.get(name).prompt for name in (chosen, second)):
        expected_positive.insert(0, animal)
    assert result.positive == [item for item in expected_positive if item]


def test_random_style_pool_is_in_fooocus_load_order(tmp_path, wildcards: WildcardLibrary) -> None:
    """§1.4: Fooocus loads user style files first (case-insensitive file order), then its shipped files, into one
    dict, and ``Random Style`` is ``rng.choice(list(styles))`` over that order. So with user styles present
    the pool starts with them: for the same seed ``a cat`` gets the style at the same index of that order."""
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "b.json").write_text('[{"name": "zz user b", "prompt": "{prompt}, b"}]', encoding="utf-8")
    (folder / "A.json").write_text('[{"name": "zz user a", "prompt": "{prompt}, a"},'
                                   ' {"name": "Fooocus Sharp", "prompt": "{prompt}, mine"}]', encoding="utf-8")
    library = StyleLibrary.load([folder])
    shipped = StyleLibrary.load().template_names()
    pool = ["Zz User A", "Fooocus Sharp", "Zz User B", *[name for name in shipped if name != "Fooocus Sharp"]]
    assert library.random_style_pool() == pool
    assert library.template_names() == [*shipped, "Zz User A", "Zz User B"]  # user text still wins per name
    for seed in range(40):
        result = plan(library, wildcards, "a cat", styles=[RANDOM_STYLE], seed=seed)
        assert result.styles == [random.Random(seed).choice(pool)], seed


def test_unknown_style_raises(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    with pytest.raises(StyleError, match="Fooocus Sharpness"):
        plan(library, wildcards, "a cat", styles=["Fooocus Sharpness"])
    with pytest.raises(StyleError, match="no template style"):
        plan(StyleLibrary(), wildcards, "a cat", styles=[RANDOM_STYLE])


def test_split_prompt_and_cleanup() -> None:
    lines = split_prompt("x ,, y  ,z.\n<lora:a:1>\n", " n1 \nn2")
    assert lines.main == "x, y, z" and lines.extra_positive == ("<lora:a:1>",)
    assert (lines.negative, lines.extra_negative, lines.expansion_allowed) == ("n1", ("n2",), True)
    tag_only = split_prompt("<lora:a:0.5>\nsecond", "")
    assert (tag_only.main, tag_only.extra_positive, tag_only.expansion_allowed) == ("", ("second",), True)
    assert split_prompt("", "").expansion_allowed is False
    assert cleanup_commas(" a,,b ,  c   d,") == "a, b, c d"


def test_tag_only_main_line_still_expands_empty(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    seen = []
    result = plan(library, wildcards, "<lora:style:0.7>", styles=[FOOOCUS_V2], expand=lambda p, s: seen.append(p) or "")
    assert seen == [""] and result.positive == ["", ""] and result.positive_top_k == 1


LORA_FILES = ["hey-lora.safetensors", "sub/you-lora.safetensors", "l1.safetensors", "l2.safetensors",
              "l3.safetensors", "l4.safetensors", "l6.safetensors", "l7.safetensors"]


@pytest.mark.parametrize(("prompt", "existing", "limit", "expected_prompt", "expected_loras"), [
    ("some prompt, very cool, <lora:hey-lora:0.4>,  cool   <lora:you-lora:0.2>", [], 5,
     "some prompt, very cool, cool", [("hey-lora.safetensors", 0.4), ("sub/you-lora.safetensors", 0.2)]),
    ("some prompt, very cool, <lora:hey-lora:0.4>,  cool   <lora:you-lora:0.2>", [], 1,
     "some prompt, very cool, cool", [("hey-lora.safetensors", 0.4)]),
    ("some prompt, very cool, <lora:l1:0.4>, <lora:l2:-0.2>, <lora:l3:0.3>, <lora:l4:0.5>, <lora:l6:0.24>, "
     "<lora:l7:0.1>", ["hey-lora.safetensors"], 5, "some prompt, very cool",
     [("l1.safetensors", 0.4), ("l2.safetensors", -0.2), ("l3.safetensors", 0.3), ("l4.safetensors", 0.5)]),
    ("some prompt, very cool, <lora:hey-lora:0.4><lora:you-lora:.2>", [], 3, "some prompt, very cool",
     [("hey-lora.safetensors", 0.4), ("sub/you-lora.safetensors", 0.2)]),
    ("some prompt, <lora:hey-lora:0.4><lora:hey-lora:0.4><lora:you-lora:+2.>", ["loras/sub/you-lora.safetensors"],
     3, "some prompt", [("hey-lora.safetensors", 0.4)]),
    ("<lora:foo:1..2>, <lora:bar:.>, <test:1.0>, <lora:baz:+> and <lora:quux:>", [], 6,
     "<lora:foo:1..2>, <lora:bar:.>, <test:1.0>, <lora:baz:+> and <lora:quux:>", []),
    ("a cat\n<lora:hey-lora:1>", [], 5, "a cat", []),
])
def test_extract_inline_loras(prompt: str, existing: list[str], limit: int, expected_prompt: str,
                              expected_loras: list[tuple[str, float]]) -> None:
    assert extract_inline_loras(prompt, LORA_FILES, existing=existing, limit=limit) == (expected_prompt,
                                                                                        expected_loras)


def test_unknown_and_over_limit_loras(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="foci.text.prompt_plan"):
        result = parse_inline_loras("cat, <lora:missing:1>, <lora:l1:0.5>, <lora:l2:1>, dog", LORA_FILES,
                                    existing=["None", "x.safetensors"], limit=2)
    assert result.prompt == "cat, dog"
    assert result.loras == [("l1.safetensors", 0.5)] and result.over_limit == [("l2.safetensors", 1.0)]
    assert result.unknown == ["missing"] and "missing" in caplog.text
    assert parse_inline_loras("<lora:l1:1>", LORA_FILES, existing=["a", "b"], limit=2).loras == []


def test_plan_removes_tags_from_main_line(library: StyleLibrary, wildcards: WildcardLibrary) -> None:
    result = plan(library, wildcards, "<lora:hey-lora:0.4>, a cat ,, <lora:nope:1>", styles=[])
    assert result.positive == ["a cat"]
