"""Fooocus-style SDXL prompt encoding (§2.4): per-item 77-token chunks, weighting toward the empty prompt with
mean restoration, clip skip without final layer norm, and the pooled CLIP-G vector of the first chunk."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from foci.text.chunks import WeightedToken, special_token_ids, tokenize_prompt
from foci.text.embeddings import EmbeddingLookup

CLIP_G_PAD_ID = 0  # Fooocus pads CLIP-G chunks with token 0 ("!") whatever the tokenizer config says
# Stands in for an embedding vector in input_ids; any id below EOS keeps the pooled position at the first EOS.
EMBEDDING_PLACEHOLDER_ID = 0

logger = logging.getLogger(__name__)


@dataclass
class EncodedPrompt:
    """Conditioning for one side of CFG: token features and the pooled CLIP-G vector."""

    cond: torch.Tensor  # [1, 77·n_total, dim_l + dim_g] float32 (CLIP-L features first, then CLIP-G)
    pooled: torch.Tensor  # [1, projection_dim] float32


@dataclass
class _ChunkBatch:
    """Model input for the chunks of one item on one encoder."""

    input_ids: list[list[int]]
    weights: list[list[float]]  # per chunk, per position (the optional empty chunk has none)
    vectors: list[tuple[int, int, torch.Tensor]]  # (row, position, vector) to inject
    sections: int  # number of real chunks (the empty chunk, if any, is the last row)
    has_weights: bool


def _core_text_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that takes input_ids and returns hidden states + pooler output (transformers 4 and 5)."""
    return getattr(model, "text_model", model)


def _token_embedding(model: torch.nn.Module) -> torch.nn.Embedding:
    return _core_text_model(model).embeddings.token_embedding


def _build_batch(chunks: list[list[WeightedToken]], *, hidden_size: int, bos_id: int, eos_id: int,
                 pad_id: int) -> _ChunkBatch:
    """Turn weighted chunks into id rows; vectors of the wrong width are dropped (the row is re-padded)."""
    rows: list[list[int]] = []
    weights: list[list[float]] = []
    vectors: list[tuple[int, int, torch.Tensor]] = []
    has_weights = False
    for row_index, chunk in enumerate(chunks):
        row: list[int] = []
        for token, _weight in chunk:
            if isinstance(token, torch.Tensor):
                if token.shape[-1] != hidden_size:
                    logger.warning("embedding vector of width %d does not fit an encoder of width %d; "
                                   "ignored", token.shape[-1], hidden_size)
                    continue
                vectors.append((row_index, len(row), token))
                row.append(EMBEDDING_PLACEHOLDER_ID)
            else:
                row.append(int(token))
        row.extend([pad_id] * (len(chunk) - len(row)))
        rows.append(row)
        chunk_weights = [float(weight) for _token, weight in chunk]
        weights.append(chunk_weights)
        has_weights = has_weights or any(weight != 1.0 for weight in chunk_weights)
    sections = len(rows)
    if has_weights or sections == 0:
        length = max((len(row) for row in rows), default=0)
        empty = [bos_id, eos_id]
        rows.append(empty + [pad_id] * (length - len(empty)))
    return _ChunkBatch(rows, weights, vectors, sections, has_weights)


def apply_token_weights(z: torch.Tensor, z_empty: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weight one chunk's features [1, T, D] toward the empty chunk's [T, D], then restore the mean.

    For each token j with weight w ≠ 1: ``z[j] = (z[j] − z_empty[j])·w + z_empty[j]``; afterwards the whole
    chunk is multiplied by ``mean(z_before) / mean(z_after)``. Returns a new tensor.
    """
    z = z.clone()
    original_mean = z.mean()
    positions = [index for index, weight in enumerate(weights) if weight != 1.0]
    if positions:
        index = torch.tensor(positions, device=z.device)
        factors = torch.tensor([weights[p] for p in positions], dtype=z.dtype, device=z.device)[:, None]
        empty_rows = z_empty[index]
        z[0, index] = (z[0, index] - empty_rows) * factors + empty_rows
    new_mean = z.mean()
    return z * (original_mean / new_mean)


class PromptEncoder:
    """Encodes prompt items with the two SDXL text encoders exactly like Fooocus (§2.4).

    Both sides are tokenized with ``tokenizer`` (CLIP-L); ``tokenizer_2`` is kept for reference only, because
    the usual CLIP-G tokenizer turns "!" into its pad token. Results of :meth:`encode_item` are cached by
    exact text and returned as the same tensor objects: treat them as read-only. Outputs stay on the encoders'
    device, in float32.
    """

    def __init__(self, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection,
                 tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer, *, clip_skip: int = 2,
                 embeddings: EmbeddingLookup | None = None):
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.embeddings = embeddings
        self._clip_skip = self._checked_clip_skip(clip_skip)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.RLock()

    @staticmethod
    def _checked_clip_skip(value: int) -> int:
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"clip_skip must be an integer >= 1, got {value!r}")
        return int(value)

    @property
    def clip_skip(self) -> int:
        """Which hidden state both encoders return: ``hidden_states[-clip_skip]`` (2 = penultimate layer)."""
        return self._clip_skip

    @clip_skip.setter
    def clip_skip(self, value: int) -> None:
        value = self._checked_clip_skip(value)
        with self._lock:
            if value != self._clip_skip:
                self._clip_skip = value
                self._cache.clear()

    def clear_cache(self) -> None:
        """Drop all cached item encodings (call after the encoders' weights change, e.g. LoRAs)."""
        with self._lock:
            self._cache.clear()

    def _run_encoder(self, model: torch.nn.Module, batch: _ChunkBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Run all rows as one batch; returns (selected hidden state as float32, pooler output of row 0)."""
        core = _core_text_model(model)
        embedding = core.embeddings.token_embedding
        device = embedding.weight.device
        input_ids = torch.tensor(batch.input_ids, dtype=torch.long, device=device)
        handle = None
        if batch.vectors:
            mask = torch.zeros(input_ids.shape, dtype=torch.bool, device=device)
            for row, position, _vector in batch.vectors:
                mask[row, position] = True
            # Boolean-mask assignment fills positions in row-major order, which is the order collected above.
            ordered = sorted(batch.vectors, key=lambda item: (item[0], item[1]))
            stacked = torch.stack([vector.reshape(-1) for _row, _position, vector in ordered])

            def inject(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
                output = output.clone()
                output[mask] = stacked.to(device=output.device, dtype=output.dtype)
                return output

            handle = embedding.register_forward_hook(inject)
        try:
            with torch.no_grad():
                outputs = core(input_ids=input_ids, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        hidden_states = outputs.hidden_states
        if self._clip_skip > len(hidden_states):
            raise ValueError(f"clip_skip {self._clip_skip} exceeds the {len(hidden_states)} hidden states")
        return hidden_states[-self._clip_skip].float(), outputs.pooler_output[0:1]

    def _encode_side(self, model: torch.nn.Module, tokenizer: CLIPTokenizer, text: str, *,
                     encoder_key: Literal["clip_l", "clip_g"], pad_id: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder: features [1, 77·n, D] (weighted, float32) and the first chunk's raw pooler output."""
        bos_id, eos_id = special_token_ids(tokenizer)
        pad = eos_id if pad_id is None else pad_id
        chunks = tokenize_prompt(tokenizer, text, pad_token_id=pad, embeddings=self.embeddings,
                                 encoder_key=encoder_key)
        hidden_size = _token_embedding(model).embedding_dim
        batch = _build_batch(chunks, hidden_size=hidden_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad)
        out, pooled = self._run_encoder(model, batch)
        if batch.sections == 0:
            return out[-1:], pooled
        pieces = []
        for k in range(batch.sections):
            z = out[k:k + 1]
            if batch.has_weights:
                z = apply_token_weights(z, out[-1], batch.weights[k])
            pieces.append(z)
        return torch.cat(pieces, dim=-2), pooled

    def encode_item(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one prompt item: (cond [1, 77·k, D_l + D_g], pooled [1, P]) in float32; cached by text."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                return cached
            cond_l, _ = self._encode_side(self.text_encoder, self.tokenizer, text, encoder_key="clip_l",
                                          pad_id=None)
            # Words are split with the CLIP-L tokenizer on both sides, like Fooocus: the vocabularies are the
            # same, but a CLIP-G tokenizer treats its pad token "!" as special and would change those ids.
            cond_g, pooled_g = self._encode_side(self.text_encoder_2, self.tokenizer, text,
                                                 encoder_key="clip_g", pad_id=CLIP_G_PAD_ID)
            if cond_l.shape[1] != cond_g.shape[1]:
                raise ValueError(f"CLIP-L and CLIP-G produced different token counts for {text!r} "
                                 f"({cond_l.shape[1]} vs {cond_g.shape[1]}); check the embedding files")
            projection = self.text_encoder_2.text_projection.weight
            pooled = pooled_g.float().to(projection.device) @ projection.float().t()
            result = (torch.cat([cond_l, cond_g.to(cond_l.device)], dim=-1), pooled)
            self._cache[text] = result
            return result

    def encode(self, items: list[str], pool_top_k: int) -> EncodedPrompt:
        """Encode each item separately, concatenate the conds in order and sum the pooled vectors of the first
        ``pool_top_k`` items (Fooocus ``clip_encode``)."""
        if not items:
            raise ValueError("at least one prompt item is needed")
        conds: list[torch.Tensor] = []
        pooled_sum: torch.Tensor | None = None
        first_pooled: torch.Tensor | None = None
        for index, text in enumerate(items):
            cond, pooled = self.encode_item(text)
            conds.append(cond)
            if first_pooled is None:
                first_pooled = pooled
            if index < pool_top_k:
                pooled_sum = pooled.clone() if pooled_sum is None else pooled_sum + pooled
        if pooled_sum is None:
            pooled_sum = torch.zeros_like(first_pooled)
        return EncodedPrompt(cond=torch.cat(conds, dim=1), pooled=pooled_sum)
