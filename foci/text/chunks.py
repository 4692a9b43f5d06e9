"""Tokenization of one prompt item into weighted 77-token CLIP chunks (§2.4)."""

from __future__ import annotations

import logging
from typing import Literal, Protocol

import torch

from foci.text.embeddings import EmbeddingLookup
from foci.text.weights import parse_weighted_segments

Token = int | torch.Tensor  # a vocabulary id, or one embedding vector injected at that position
WeightedToken = tuple[Token, float]

CHUNK_LENGTH = 77  # BOS + 75 tokens + EOS
LONG_WORD_TOKENS = 8  # words with at least this many tokens may be split across chunks
EMBEDDING_PREFIX = "embedding:"

logger = logging.getLogger(__name__)


class WordTokenizer(Protocol):
    """The part of a Hugging Face tokenizer used here: ``tokenizer(text)["input_ids"]`` with BOS/EOS."""

    def __call__(self, text: str) -> dict: ...


def special_token_ids(tokenizer: WordTokenizer) -> tuple[int, int]:
    """(BOS id, EOS id), read from how the tokenizer encodes the empty string."""
    ids = list(tokenizer("")["input_ids"])
    if len(ids) < 2:
        raise ValueError("the tokenizer must add a start and an end token")
    return int(ids[0]), int(ids[1])


def _word_tokens(tokenizer: WordTokenizer, word: str) -> list[int]:
    return [int(token) for token in tokenizer(word)["input_ids"][1:-1]]


def _embedding_vectors(
    embeddings: EmbeddingLookup, name: str, encoder_key: Literal["clip_l", "clip_g"]
) -> tuple[torch.Tensor | None, str]:
    """Look ``name`` up; if missing, retry without surrounding commas (the stripped tail is the leftover)."""
    vectors = embeddings.get(name, encoder_key)
    if vectors is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            return embeddings.get(stripped, encoder_key), name[len(stripped):]
    return vectors, ""


def _word_groups(
    tokenizer: WordTokenizer, text: str, embeddings: EmbeddingLookup | None,
    encoder_key: Literal["clip_l", "clip_g"],
) -> list[list[WeightedToken]]:
    """One token group per word (or per embedding), each token tagged with its segment weight."""
    groups: list[list[WeightedToken]] = []
    for segment, weight in parse_weighted_segments(text):
        for word in segment.replace("\n", " ").split(" "):
            if not word:
                continue
            if word.startswith(EMBEDDING_PREFIX) and embeddings is not None:
                name = word[len(EMBEDDING_PREFIX):].strip("\n")
                vectors, leftover = _embedding_vectors(embeddings, name, encoder_key)
                if vectors is None:
                    logger.warning("embedding:%s does not exist, ignoring it", name)
                else:
                    groups.append([(vector, weight) for vector in vectors])
                if not leftover:
                    continue
                word = leftover
            groups.append([(token, weight) for token in _word_tokens(tokenizer, word)])
    return groups


def pack_chunks(
    groups: list[list[WeightedToken]], *, bos_id: int, eos_id: int, pad_token_id: int,
    chunk_length: int = CHUNK_LENGTH,
) -> list[list[WeightedToken]]:
    """Pack word groups into chunks of ``chunk_length``: BOS + tokens + EOS + padding.

    A short word (< 8 tokens) that does not fit in the current chunk starts the next one; a long word fills
    the current chunk (which then ends in EOS with no padding) and continues in the next. Specials weigh 1.
    """
    capacity = chunk_length - 1  # room before the EOS
    chunks: list[list[WeightedToken]] = []
    chunk: list[WeightedToken] = [(bos_id, 1.0)]
    chunks.append(chunk)
    for group in groups:
        is_long = len(group) >= LONG_WORD_TOKENS
        remaining = list(group)
        while remaining:
            if len(chunk) + len(remaining) > capacity:
                room = chunk_length - len(chunk) - 1
                if is_long:
                    chunk.extend(remaining[:room])
                    chunk.append((eos_id, 1.0))
                    remaining = remaining[room:]
                else:
                    chunk.append((eos_id, 1.0))
                    chunk.extend([(pad_token_id, 1.0)] * room)
                chunk = [(bos_id, 1.0)]
                chunks.append(chunk)
            else:
                chunk.extend(remaining)
                remaining = []
    chunk.append((eos_id, 1.0))
    chunk.extend([(pad_token_id, 1.0)] * (chunk_length - len(chunk)))
    return chunks


def tokenize_prompt(
    tokenizer: WordTokenizer, text: str, *, pad_token_id: int, embeddings: EmbeddingLookup | None,
    encoder_key: Literal["clip_l", "clip_g"],
) -> list[list[WeightedToken]]:
    """Tokenize one prompt item into 77-token chunks of ``(token id or embedding vector, weight)``.

    Weighted segments are split on spaces (newlines count as spaces) and each word is tokenized on its own
    without BOS/EOS; ``embedding:NAME`` words insert the embedding's vectors. Empty text gives one chunk
    ``[BOS, EOS, pad, ...]``.
    """
    bos_id, eos_id = special_token_ids(tokenizer)
    groups = _word_groups(tokenizer, text, embeddings, encoder_key)
    return pack_chunks(groups, bos_id=bos_id, eos_id=eos_id, pad_token_id=pad_token_id)
