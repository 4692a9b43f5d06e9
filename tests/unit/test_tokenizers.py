"""SDXL tokenizers built offline, prompt weight parsing and 77-token chunk packing (§1.10, §2.4)."""

from __future__ import annotations

import json

import pytest

from foci.text.chunks import pack_chunks, special_token_ids, tokenize_prompt
from foci.text.tokenizers import (
    CLIP_VOCAB_SIZE,
    bytes_to_unicode,
    clip_bpe_path,
    clip_vocab_and_merges,
    load_sdxl_tokenizers,
)
from foci.text.weights import parse_weighted_segments

BOS, EOS = 49406, 49407
A, COMMA = 320, 267  # "a</w>", ",</w>"
LONG_WORD = "x" * 40  # 9 × "xxxx" + "xxxx</w>": 10 tokens, a "long" word
LONG_WORD_IDS = [32035] * 9 + [22819]


@pytest.fixture(scope="module")
def tokenizers():
    return load_sdxl_tokenizers()


def ids(chunk):
    return [token for token, _weight in chunk]


def weights(chunk):
    return [weight for _token, weight in chunk]


# --- tokenizers ---------------------------------------------------------------------------------------------


def test_bpe_file_is_found_without_importing_clip():
    import sys

    path = clip_bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()
    assert "clip" not in sys.modules


def test_bytes_to_unicode_order_defines_first_ids():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    values = list(table.values())
    assert values[0] == "!" and values.index("a") == 64  # "a" is id 64, "a</w>" id 320
    assert table[ord(" ")] == "Ġ"  # space (byte 32) is remapped to U+0120


def test_vocab_size_and_specials(tokenizers):
    vocab, merges = clip_vocab_and_merges(clip_bpe_path())
    assert len(vocab) == CLIP_VOCAB_SIZE == 49408
    assert len(merges) == 48894
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert vocab["a</w>"] == A
    tokenizer_l, tokenizer_g = tokenizers
    assert len(tokenizer_l) == len(tokenizer_g) == 49408
    assert tokenizer_l.pad_token_id == EOS
    assert tokenizer_g.pad_token_id == 0 and tokenizer_g.pad_token == "!"
    assert special_token_ids(tokenizer_l) == special_token_ids(tokenizer_g) == (BOS, EOS)


@pytest.mark.parametrize(("text", "expected"), [
    ("a photo of a cat", [BOS, 320, 1125, 539, 320, 2368, EOS]),
    ("Hello, World", [BOS, 3306, 267, 1002, EOS]),
    ("masterpiece, best quality", [BOS, 12066, 267, 949, 3027, EOS]),
    ("photorealistic", [BOS, 1153, 16157, EOS]),
    ("café naïve", [BOS, 15304, 1097, 35689, 563, EOS]),
    ("", [BOS, EOS]),
])
def test_known_clip_ids(tokenizers, text, expected):
    for tokenizer in tokenizers:
        assert tokenizer(text)["input_ids"] == expected


def _ids_of_pieces(tokenizer, pieces):
    """BOS + the ids of each piece tokenized on its own + EOS."""
    return [BOS, *[i for piece in pieces for i in tokenizer(piece)["input_ids"][1:-1]], EOS]


def test_cjk_text_is_normalised_like_fooocus(tokenizers):
    """Fooocus tokenizes with the slow ``transformers.CLIPTokenizer`` and no ``ftfy`` installed (it is not in
    its requirements), so the text first goes through BERT's ``BasicTokenizer``: a space around every CJK
    ideograph (U+4E00–9FFF …; kana and the ideographic comma are not ideographs), then CLIP's split pattern.
    ``東京の夜景、ネオン`` therefore splits into ``東 京 の 夜 景 、ネオン`` before BPE; without that step the
    pattern keeps ``東京の夜景`` as one letter run and BPE gives other ids."""
    pieces = ["東", "京", "の", "夜", "景", "、ネオン"]
    expected = [BOS, 27667, 365, 21078, 361, 4813, 362, 23170, 506, 48132, 363, 45262, 2429, 235, 3909, 103,
                26875, EOS]
    for tokenizer in tokenizers:
        assert _ids_of_pieces(tokenizer, pieces) == expected
        assert tokenizer("東京の夜景、ネオン")["input_ids"] == expected
        split_comma = [*pieces[:-1], "、", "ネオン"]
        assert tokenizer("東京の 夜景、 ネオン")["input_ids"] == _ids_of_pieces(tokenizer, split_comma)


def test_zero_width_joiner_and_other_format_characters_are_dropped(tokenizers):
    """``BasicTokenizer`` drops every character of Unicode category C* except tab/newline/CR — among them the
    zero-width joiner (U+200D, Cf) inside emoji sequences and a byte-order mark (U+FEFF) — before BPE, so
    ``👨‍👩‍👧‍👦 family`` is tokenized as the four separate emoji ``👨👩👧👦 family``."""
    expected = [BOS, 18966, 18800, 48938, 964, 355, 1315, EOS]
    for tokenizer in tokenizers:
        assert tokenizer("👨\u200d👩\u200d👧\u200d👦 family")["input_ids"] == expected
        assert tokenizer("👨👩👧👦 family")["input_ids"] == expected
        assert tokenizer("\ufeffhello\tWorld")["input_ids"] == [BOS, 3306, 1002, EOS]


def test_exclamation_mark_is_special_only_in_the_clip_g_tokenizer(tokenizers):
    # CLIP-G's pad token "!" is registered as a special token, so it no longer merges into "!</w>" (256).
    # Fooocus tokenizes both sides with the plain CLIP tokenizer; PromptEncoder therefore uses tokenizer_l.
    tokenizer_l, tokenizer_g = tokenizers
    assert tokenizer_l("Hello, World!")["input_ids"] == [BOS, 3306, 267, 1002, 256, EOS]
    assert tokenizer_g("Hello, World!")["input_ids"] == [BOS, 3306, 267, 1002, 0, EOS]


def test_padding_differs_between_encoders(tokenizers):
    tokenizer_l, tokenizer_g = tokenizers
    expected = [BOS, 320, 1125, 539, 320, 2368, EOS]
    padded_l = tokenizer_l("a photo of a cat", padding="max_length", max_length=77)["input_ids"]
    padded_g = tokenizer_g("a photo of a cat", padding="max_length", max_length=77)["input_ids"]
    assert padded_l == expected + [EOS] * 70
    assert padded_g == expected + [0] * 70


def test_tokenizers_are_cached_per_process(tokenizers):
    assert load_sdxl_tokenizers() is load_sdxl_tokenizers()
    assert load_sdxl_tokenizers()[0] is tokenizers[0]


def test_diffusers_folder_layout_is_loaded_locally(tmp_path, tokenizers):
    tokenizer_l, tokenizer_g = tokenizers
    tokenizer_l.save_pretrained(tmp_path / "tokenizer")
    tokenizer_g.save_pretrained(tmp_path / "tokenizer_2")
    loaded_l, loaded_g = load_sdxl_tokenizers(tmp_path)
    assert loaded_l is not tokenizer_l
    assert loaded_g("a cat", padding="max_length", max_length=6)["input_ids"] == [BOS, 320, 2368, EOS, 0, 0]
    padded_l = loaded_l("a cat", padding="max_length", max_length=6)["input_ids"]
    assert padded_l == [BOS, 320, 2368, EOS, EOS, EOS]
    # A folder without the two subfolders falls back to the BPE-built pair.
    (tmp_path / "other").mkdir()
    assert load_sdxl_tokenizers(tmp_path / "other") == load_sdxl_tokenizers()


def test_cached_vocab_file_matches(tokenizers):
    vocab, _ = clip_vocab_and_merges(clip_bpe_path())
    assert tokenizers[0].get_vocab()["photo</w>"] == vocab["photo</w>"] == 1125
    assert json.dumps(vocab["cat</w>"]) == "2368"


# --- weight parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("(a)", [("a", 1.1)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("(((a)))", [("a", 1.1 * 1.1 * 1.1)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("((a:1.5))", [("a", 1.5)]),  # explicit weight replaces the inherited 1.21
    ("((a):0.5)", [("a", 0.5 * 1.1)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a: 1.25 )", [("a", 1.25)]),  # float() accepts surrounding spaces
    ("(a:1e-1)", [("a", 0.1)]),
    ("(a:1.5:2)", [("a:1.5", 2.0)]),  # last colon wins
    ("(a:abc)", [("a:abc", 1.1)]),  # not a number: the colon stays and ×1.1 applies
    ("(:1.5)", [(":1.5", 1.1)]),  # colon at position 0 is not a weight
    ("\\(a\\)", [("(a)", 1.0)]),
    ("(\\(a\\):1.2)", [("(a)", 1.2)]),
    ("\\((a)\\)", [("(", 1.0), ("a", 1.1), (")", 1.0)]),
    ("(a", [("(a", 1.0)]),  # unclosed: literal text
    ("a)", [("a)", 1.0)]),  # stray closer: literal text
    ("a) (b)", [("a) (b)", 1.0)]),  # after a stray ')' the depth is negative: no group until it is back at 0
    ("(a))", [("a", 1.1), (")", 1.0)]),
    ("((a)", [("(a", 1.1)]),
    ("a () b", [("a ", 1.0), (" b", 1.0)]),  # empty group vanishes
    ("[a]", [("[a]", 1.0)]),
    ("[[a, b]]", [("[[a, b]]", 1.0)]),
    ("a (b:1.2) c", [("a ", 1.0), ("b", 1.2), (" c", 1.0)]),
    ("(a (b) c:0.5)", [("a ", 0.5), ("b", 0.5 * 1.1), (" c", 0.5)]),
    ("x, (red [hat]:1.3), ((blue))", [("x, ", 1.0), ("red [hat]", 1.3), (", ", 1.0), ("blue", 1.1 * 1.1)]),
    ("(embedding:foo:1.1)", [("embedding:foo", 1.1)]),
    ("", []),
])
def test_parse_weighted_segments(text, expected):
    result = parse_weighted_segments(text)
    assert [segment for segment, _ in result] == [segment for segment, _ in expected]
    assert [weight for _, weight in result] == [weight for _, weight in expected]  # exact Python floats


def test_nesting_weight_is_the_exact_product():
    assert parse_weighted_segments("((a))")[0][1] == 1.2100000000000002


# --- chunk packing ------------------------------------------------------------------------------------------


def tokenize(tokenizer, text, pad):
    return tokenize_prompt(tokenizer, text, pad_token_id=pad, embeddings=None, encoder_key="clip_l")


def test_single_chunk_padding(tokenizers):
    tokenizer_l, tokenizer_g = tokenizers
    expected = [BOS, 320, 1125, 539, 320, 2368, EOS]
    (chunk_l,) = tokenize(tokenizer_l, "a photo of a cat", EOS)
    (chunk_g,) = tokenize(tokenizer_g, "a photo of a cat", 0)
    assert ids(chunk_l) == expected + [EOS] * 70
    assert ids(chunk_g) == expected + [0] * 70
    assert weights(chunk_l) == [1.0] * 77


def test_empty_text_gives_one_empty_chunk(tokenizers):
    for text in ("", "   ", "\n", "()"):
        chunks = tokenize(tokenizers[1], text, 0)
        assert [ids(chunk) for chunk in chunks] == [[BOS, EOS] + [0] * 75]


def test_exactly_75_tokens_fit_one_chunk(tokenizers):
    (chunk,) = tokenize(tokenizers[0], "a " * 75, EOS)
    assert ids(chunk) == [BOS] + [A] * 75 + [EOS]


def test_76th_token_opens_a_second_chunk(tokenizers):
    chunks = tokenize(tokenizers[0], "a " * 76, EOS)
    assert [ids(chunk) for chunk in chunks] == [[BOS] + [A] * 75 + [EOS], [BOS, A, EOS] + [EOS] * 74]


def test_short_word_moves_whole_to_next_chunk(tokenizers):
    chunks = tokenize(tokenizers[1], "a " * 74 + "photorealistic", 0)  # 74 + 2 tokens > 75
    assert ids(chunks[0]) == [BOS] + [A] * 74 + [EOS, 0]
    assert ids(chunks[1]) == [BOS, 1153, 16157, EOS] + [0] * 73


def test_long_word_is_split_across_chunks(tokenizers):
    assert tokenizers[0](LONG_WORD)["input_ids"][1:-1] == LONG_WORD_IDS
    chunks = tokenize(tokenizers[1], "a " * 70 + LONG_WORD, 0)
    assert ids(chunks[0]) == [BOS] + [A] * 70 + LONG_WORD_IDS[:5] + [EOS]  # full, no pad
    assert ids(chunks[1]) == [BOS] + LONG_WORD_IDS[5:] + [EOS] + [0] * 70
    assert all(len(chunk) == 77 for chunk in chunks)


def test_seven_token_word_is_still_moved(tokenizers):
    groups = [[(A, 1.0)] * 74, [(7, 1.0)] * 7]
    chunks = pack_chunks(groups, bos_id=BOS, eos_id=EOS, pad_token_id=0)
    assert ids(chunks[0]) == [BOS] + [A] * 74 + [EOS, 0]
    assert ids(chunks[1]) == [BOS] + [7] * 7 + [EOS] + [0] * 68
    groups[1] = [(8, 1.0)] * 8
    chunks = pack_chunks(groups, bos_id=BOS, eos_id=EOS, pad_token_id=0)
    assert ids(chunks[0]) == [BOS] + [A] * 74 + [8, EOS]
    assert ids(chunks[1]) == [BOS] + [8] * 7 + [EOS] + [0] * 68


def test_weights_follow_tokens_and_specials_weigh_one(tokenizers):
    (chunk,) = tokenize(tokenizers[0], "a (photo of:1.5) ((cat))", EOS)
    assert ids(chunk)[:7] == [BOS, 320, 1125, 539, 2368, EOS, EOS]
    assert weights(chunk)[:6] == [1.0, 1.0, 1.5, 1.5, 1.1 * 1.1, 1.0]
    assert set(weights(chunk)[5:]) == {1.0}


def test_words_are_not_merged_across_segments(tokenizers):
    (merged,) = tokenize(tokenizers[0], "reddog", EOS)
    (split,) = tokenize(tokenizers[0], "(red)dog", EOS)
    assert ids(split)[:4] == [BOS, 736, 1929, EOS]  # "red</w>", "dog</w>"
    assert ids(merged)[:3] != [BOS, 736, 1929]


def test_newlines_split_words(tokenizers):
    (chunk,) = tokenize(tokenizers[0], "a\nphoto\n\nof", EOS)
    assert ids(chunk)[:5] == [BOS, 320, 1125, 539, EOS]


def test_escaped_parentheses_are_tokenized_as_text(tokenizers):
    (chunk,) = tokenize(tokenizers[0], "\\(a\\)", EOS)
    assert ids(chunk)[:5] == [BOS, 263, 320, 264, EOS]  # "(", "a</w>", ")</w>"
    assert weights(chunk)[:5] == [1.0] * 5


def test_embedding_words_without_lookup_are_plain_text(tokenizers):
    (chunk,) = tokenize(tokenizers[0], "embedding:foo", EOS)
    assert ids(chunk)[:6] == [BOS, 19703, 796, 281, 23435, EOS]  # "embed", "ding", ":", "foo</w>"
