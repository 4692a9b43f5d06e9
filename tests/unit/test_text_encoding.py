"""Fooocus-style SDXL prompt encoding on tiny random CLIP models (§2.4) and embedding files (§1.10)."""

from __future__ import annotations

import logging

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from foci.text.chunks import tokenize_prompt
from foci.text.embeddings import EmbeddingLookup
from foci.text.encoder import EncodedPrompt, PromptEncoder, apply_token_weights
from foci.text.tokenizers import load_sdxl_tokenizers

BOS, EOS = 49406, 49407
CAT_IDS = [BOS, 320, 1125, 539, 320, 2368, EOS]  # "a photo of a cat"
DIM_L, DIM_G, PROJ = 64, 128, 64
LAYERS = 3


def tiny_config(hidden: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=LAYERS, num_attention_heads=2, max_position_embeddings=77,
                          hidden_act=act, projection_dim=PROJ)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(1234)
    text_encoder = CLIPTextModel(tiny_config(DIM_L, "quick_gelu")).eval()
    text_encoder_2 = CLIPTextModelWithProjection(tiny_config(DIM_G, "gelu")).eval()
    return text_encoder, text_encoder_2


@pytest.fixture(scope="module")
def tokenizers():
    return load_sdxl_tokenizers()


def make_encoder(models, tokenizers, **kwargs) -> PromptEncoder:
    return PromptEncoder(models[0], models[1], tokenizers[0], tokenizers[1], **kwargs)


def core(model):
    return getattr(model, "text_model", model)


def padded(ids: list[int], pad: int) -> list[int]:
    return ids + [pad] * (77 - len(ids))


def raw_hidden(model, rows: list[list[int]], index: int = -2) -> torch.Tensor:
    with torch.no_grad():
        outputs = core(model)(input_ids=torch.tensor(rows), output_hidden_states=True)
    return outputs.hidden_states[index].float()


def manual_hidden_states(model, input_ids: torch.Tensor, activation) -> list[torch.Tensor]:
    """Independent re-implementation of the CLIP text transformer (causal pre-LN), all hidden states."""
    text = core(model)
    length = input_ids.shape[1]
    h = text.embeddings.token_embedding(input_ids) + text.embeddings.position_embedding(torch.arange(length))
    mask = torch.full((length, length), float("-inf")).triu(1)
    states = [h]
    for layer in text.encoder.layers:
        x = layer.layer_norm1(h)
        attention = layer.self_attn
        batch, _, width = x.shape
        heads = attention.num_heads
        head_dim = width // heads

        def split(t, batch=batch, heads=heads, head_dim=head_dim):
            return t.view(batch, length, heads, head_dim).transpose(1, 2)

        q, k, v = split(attention.q_proj(x)), split(attention.k_proj(x)), split(attention.v_proj(x))
        scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5 + mask
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
        h = h + attention.out_proj(mixed)
        h = h + layer.mlp.fc2(activation(layer.mlp.fc1(layer.layer_norm2(h))))
        states.append(h)
    return states


def fooocus_weighting_loop(out: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """The weighting exactly as written in the reference: in place, token by token, then mean restoration."""
    out = out.clone()
    pieces = []
    for k in range(len(weights)):
        z = out[k:k + 1]
        original_mean = z.mean()
        z_empty = out[-1]
        for j in range(len(z[0])):
            weight = weights[k][j]
            if weight != 1.0:
                z[0][j] = (z[0][j] - z_empty[j]) * weight + z_empty[j]
        new_mean = z.mean()
        pieces.append(z * (original_mean / new_mean))
    return torch.cat(pieces, dim=-2)


# --- shapes, clip skip, plain path --------------------------------------------------------------------------


def test_shapes_and_dtype(models, tokenizers):
    encoder = make_encoder(models, tokenizers)
    cond, pooled = encoder.encode_item("a photo of a cat")
    assert cond.shape == (1, 77, DIM_L + DIM_G) and cond.dtype == torch.float32
    assert pooled.shape == (1, PROJ) and pooled.dtype == torch.float32
    long_cond, _ = encoder.encode_item("a " * 80)
    assert long_cond.shape == (1, 154, DIM_L + DIM_G)


def test_plain_path_equals_input_ids_forward_bit_for_bit(models, tokenizers):
    encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([]))
    cond, pooled = encoder.encode_item("a photo of a cat")
    assert torch.equal(cond[..., :DIM_L], raw_hidden(models[0], [padded(CAT_IDS, EOS)]))
    assert torch.equal(cond[..., DIM_L:], raw_hidden(models[1], [padded(CAT_IDS, 0)]))
    with torch.no_grad():
        pooler = core(models[1])(input_ids=torch.tensor([padded(CAT_IDS, 0)])).pooler_output
        text_embeds = models[1](input_ids=torch.tensor([padded(CAT_IDS, 0)])).text_embeds
    assert torch.equal(pooled, pooler @ models[1].text_projection.weight.t())
    torch.testing.assert_close(pooled, text_embeds, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("clip_skip", [1, 2, 3, 4])
def test_clip_skip_selects_hidden_state_without_final_norm(models, tokenizers, clip_skip):
    encoder = make_encoder(models, tokenizers, clip_skip=clip_skip)
    cond, _ = encoder.encode_item("a photo of a cat")
    quick_gelu = lambda x: x * torch.sigmoid(1.702 * x)  # noqa: E731
    with torch.no_grad():
        states_l = manual_hidden_states(models[0], torch.tensor([padded(CAT_IDS, EOS)]), quick_gelu)
        states_g = manual_hidden_states(models[1], torch.tensor([padded(CAT_IDS, 0)]), F.gelu)
    assert len(states_l) == LAYERS + 1
    torch.testing.assert_close(cond[..., :DIM_L], states_l[-clip_skip], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond[..., DIM_L:], states_g[-clip_skip], rtol=1e-5, atol=1e-5)
    for other in range(1, LAYERS + 2):
        if other != clip_skip:
            assert not torch.allclose(cond[..., :DIM_L], states_l[-other], atol=1e-3)


def test_clip_skip_out_of_range(models, tokenizers):
    with pytest.raises(ValueError):
        make_encoder(models, tokenizers, clip_skip=0)
    encoder = make_encoder(models, tokenizers, clip_skip=LAYERS + 2)
    with pytest.raises(ValueError):
        encoder.encode_item("a cat")


# --- weighting ----------------------------------------------------------------------------------------------


def test_weighting_and_mean_restoration_exact(models, tokenizers):
    encoder = make_encoder(models, tokenizers)
    text = "a (photo:1.5) of ((a)) (cat:0.25)"
    cond, _ = encoder.encode_item(text)
    weights = [[1.0, 1.0, 1.5, 1.0, 1.1 * 1.1, 0.25] + [1.0] * 71]
    for model, pad, features in ((models[0], EOS, cond[..., :DIM_L]), (models[1], 0, cond[..., DIM_L:])):
        out = raw_hidden(model, [padded(CAT_IDS, pad), padded([BOS, EOS], pad)])
        expected = fooocus_weighting_loop(out, weights)
        assert torch.equal(features, expected)
        assert not torch.allclose(features, out[0:1], atol=1e-4)  # the weights did something
        torch.testing.assert_close(features.mean(), out[0:1].mean(), rtol=1e-5, atol=0)  # mean restored


def test_apply_token_weights_formula_by_hand():
    z = torch.tensor([[[1.0, 3.0], [2.0, 4.0], [5.0, 7.0]]])
    empty = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    result = apply_token_weights(z, empty, [1.0, 2.0, 0.5])
    weighted = torch.tensor([[[1.0, 3.0], [3.0, 7.0], [3.0, 4.0]]])  # (z - e)·w + e on rows 1 and 2
    expected = weighted * (z.mean() / weighted.mean())  # 22/6 over 21/6
    assert torch.equal(result, expected)
    assert torch.equal(z, torch.tensor([[[1.0, 3.0], [2.0, 4.0], [5.0, 7.0]]]))  # input untouched


def test_unweighted_chunks_of_a_weighted_item_are_rescaled_by_exactly_one(models, tokenizers):
    encoder = make_encoder(models, tokenizers)
    cond, _ = encoder.encode_item("(a:1.3) " + "b " * 80)  # chunk 1 weighted, chunk 2 not
    first = [BOS, 320] + [321] * 74 + [EOS]
    second = padded([BOS] + [321] * 6 + [EOS], EOS)
    out = raw_hidden(models[0], [first, second, padded([BOS, EOS], EOS)])
    assert torch.equal(cond[:, 77:, :DIM_L], out[1:2])
    assert torch.equal(cond[:, :77, :DIM_L], fooocus_weighting_loop(out, [[1.0, 1.3] + [1.0] * 75])[:, :77])


def test_unweighted_item_runs_without_empty_chunk(models, tokenizers):
    calls = []
    def record(_module, _args, kwargs):
        calls.append(kwargs["input_ids"].shape)

    handle = models[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        encoder = make_encoder(models, tokenizers)
        encoder.encode_item("a photo of a cat")
        encoder.encode_item("a (photo:1.2) of a cat")
        encoder.encode_item("a " * 80)
    finally:
        handle.remove()
    assert calls == [(1, 77), (2, 77), (2, 77)]


# --- pooled -------------------------------------------------------------------------------------------------


def test_pooled_uses_first_chunk_only_and_ignores_weights_and_clip_skip(models, tokenizers):
    encoder = make_encoder(models, tokenizers)
    _, pooled = encoder.encode_item("a photo of a cat")
    _, pooled_weighted = encoder.encode_item("(a photo:1.4) of (a cat:0.7)")
    # Batch of 2 (chunk + empty) versus 1: only rounding may differ.
    torch.testing.assert_close(pooled_weighted, pooled, rtol=1e-6, atol=1e-6)
    _, pooled_long = encoder.encode_item("a " * 80)
    _, pooled_first_chunk = encoder.encode_item("a " * 75)
    torch.testing.assert_close(pooled_long, pooled_first_chunk, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(pooled_long, pooled, atol=1e-4)
    _, pooled_skip1 = make_encoder(models, tokenizers, clip_skip=1).encode_item("a photo of a cat")
    assert torch.equal(pooled_skip1, pooled)


def test_encode_sums_pooled_of_first_k_items_and_concatenates_conds(models, tokenizers):
    encoder = make_encoder(models, tokenizers)
    items = ["a photo of a cat", "(dog:1.2)", "a " * 80]
    parts = [encoder.encode_item(text) for text in items]
    result = encoder.encode(items, pool_top_k=2)
    assert isinstance(result, EncodedPrompt)
    assert result.cond.shape == (1, 77 * 4, DIM_L + DIM_G)
    assert torch.equal(result.cond, torch.cat([cond for cond, _ in parts], dim=1))
    assert torch.equal(result.pooled, parts[0][1] + parts[1][1])
    assert torch.equal(encoder.encode(items, pool_top_k=1).pooled, parts[0][1])
    assert torch.equal(encoder.encode(items, pool_top_k=3).pooled, parts[0][1] + parts[1][1] + parts[2][1])
    assert torch.equal(encoder.encode(items, pool_top_k=0).pooled, torch.zeros(1, PROJ))
    single = encoder.encode(items[:1], pool_top_k=1)
    single.pooled.add_(1.0)  # results must not alias the cache
    assert torch.equal(encoder.encode_item(items[0])[1], parts[0][1])
    with pytest.raises(ValueError):
        encoder.encode([], pool_top_k=1)


# --- cache --------------------------------------------------------------------------------------------------


def test_cache_hits_skip_the_models(models, tokenizers):
    calls = []
    handles = [model.register_forward_hook(lambda *_: calls.append(1)) for model in (core(models[0]),
                                                                                      core(models[1]))]
    try:
        encoder = make_encoder(models, tokenizers)
        first = encoder.encode_item("a photo of a cat")
        assert len(calls) == 2
        second = encoder.encode_item("a photo of a cat")
        assert len(calls) == 2 and second[0] is first[0] and second[1] is first[1]
        encoder.encode_item("a photo of a cat ")  # exact-text cache: a different key
        assert len(calls) == 4
        encoder.clip_skip = 2  # unchanged: cache kept
        assert encoder.encode_item("a photo of a cat")[0] is first[0] and len(calls) == 4
        encoder.clip_skip = 1
        assert encoder.clip_skip == 1
        assert encoder.encode_item("a photo of a cat")[0] is not first[0] and len(calls) == 6
        encoder.clear_cache()
        encoder.encode_item("a photo of a cat")
        assert len(calls) == 8
    finally:
        for handle in handles:
            handle.remove()


# --- embeddings ---------------------------------------------------------------------------------------------


def write_embedding(path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> None:
    safetensors.torch.save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))


def test_embedding_of_token_rows_reproduces_the_plain_prompt_exactly(models, tokenizers, tmp_path):
    with torch.no_grad():
        rows_l = core(models[0]).embeddings.token_embedding.weight[[1125, 539]].clone()
        rows_g = core(models[1]).embeddings.token_embedding.weight[[1125, 539]].clone()
    write_embedding(tmp_path / "photoof.safetensors", rows_l, rows_g)
    encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([tmp_path]))
    plain = encoder.encode_item("a photo of a cat")
    injected = encoder.encode_item("a embedding:photoof a cat")
    assert torch.equal(injected[0], plain[0]) and torch.equal(injected[1], plain[1])


def test_pooled_found_at_first_eos_with_legacy_eos_id(models, tokenizers, tmp_path):
    with torch.no_grad():
        rows_l = core(models[0]).embeddings.token_embedding.weight[[1125, 539]].clone()
        rows_g = core(models[1]).embeddings.token_embedding.weight[[1125, 539]].clone()
    write_embedding(tmp_path / "photoof.safetensors", rows_l, rows_g)
    text_model = core(models[1])
    saved = text_model.eos_token_id
    text_model.eos_token_id = 2  # old configs: pool at argmax(input_ids)
    try:
        encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([tmp_path]))
        plain = encoder.encode_item("a photo of a cat")
        injected = encoder.encode_item("a embedding:photoof a cat")
    finally:
        text_model.eos_token_id = saved
    assert torch.equal(injected[1], plain[1])


def test_embedding_changes_exactly_its_positions_inputs(models, tokenizers, tmp_path):
    generator = torch.Generator().manual_seed(7)
    vectors_l = torch.randn(2, DIM_L, generator=generator)
    vectors_g = torch.randn(2, DIM_G, generator=generator)
    write_embedding(tmp_path / "rnd.safetensors", vectors_l, vectors_g)
    encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([tmp_path]))
    captured = []
    hooks = [core(model).encoder.layers[0].register_forward_pre_hook(
        lambda _m, args: captured.append(args[0])) for model in models]
    try:
        cond, _ = encoder.encode_item("a embedding:rnd cat")
        plain, _ = encoder.encode_item("a photo of cat")
    finally:
        for hook in hooks:
            hook.remove()
    ids = [BOS, 320, 1125, 539, 2368, EOS]  # the same layout with real words at positions 2 and 3
    for (model, pad, vectors), layer_input in zip(((models[0], EOS, vectors_l), (models[1], 0, vectors_g)),
                                                  captured[:2], strict=True):
        embeddings = core(model).embeddings
        with torch.no_grad():
            tokens = embeddings.token_embedding(torch.tensor([padded(ids, pad)]))
            tokens[0, 2:4] = vectors
            expected = tokens + embeddings.position_embedding(torch.arange(77))[None]
        assert torch.equal(layer_input, expected)
    plain_inputs = captured[2:]
    for injected_input, plain_input in zip(captured[:2], plain_inputs, strict=True):
        differs = (injected_input != plain_input).any(dim=-1)[0]
        assert differs.nonzero().flatten().tolist() == [2, 3]
    assert not torch.allclose(cond, plain, atol=1e-4)


def test_unknown_embedding_is_ignored_with_a_warning(models, tokenizers, tmp_path, caplog):
    encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([tmp_path]))
    with caplog.at_level(logging.WARNING):
        missing = encoder.encode_item("a embedding:nope cat")
    assert "nope" in caplog.text
    assert torch.equal(missing[0], encoder.encode_item("a cat")[0])


def test_embedding_of_wrong_width_is_dropped_for_that_encoder(models, tokenizers, tmp_path, caplog):
    write_embedding(tmp_path / "half.safetensors", torch.randn(2, DIM_L), torch.randn(2, DIM_L))  # G is wrong
    encoder = make_encoder(models, tokenizers, embeddings=EmbeddingLookup([tmp_path]))
    with caplog.at_level(logging.WARNING):
        cond, _ = encoder.encode_item("a embedding:half cat")
    assert "width" in caplog.text
    assert torch.equal(cond[..., DIM_L:], encoder.encode_item("a cat")[0][..., DIM_L:])
    assert not torch.equal(cond[..., :DIM_L], encoder.encode_item("a cat")[0][..., :DIM_L])


def test_embedding_tokens_in_chunks(tokenizers, tmp_path):
    vectors_l = torch.arange(3 * DIM_L, dtype=torch.float32).reshape(3, DIM_L)
    write_embedding(tmp_path / "three.safetensors", vectors_l, torch.zeros(3, DIM_G))
    lookup = EmbeddingLookup([tmp_path])
    (chunk,) = tokenize_prompt(tokenizers[0], "(embedding:three:1.2), embedding:three,", pad_token_id=EOS,
                               embeddings=lookup, encoder_key="clip_l")
    kinds = [token if isinstance(token, int) else "vec" for token, _ in chunk[:11]]
    assert kinds == [BOS, "vec", "vec", "vec", 267, "vec", "vec", "vec", 267, EOS, EOS]  # leftover "," kept
    assert [weight for _, weight in chunk[:5]] == [1.0, 1.2, 1.2, 1.2, 1.0]
    assert torch.equal(chunk[2][0], vectors_l[1])
    (chunk_g,) = tokenize_prompt(tokenizers[0], "embedding:three", pad_token_id=0, embeddings=lookup,
                                 encoder_key="clip_g")
    assert torch.equal(chunk_g[1][0], torch.zeros(DIM_G)) and chunk_g[4][0] == EOS


def test_embedding_lookup_files(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    style_path = tmp_path / "sub" / "deeper" / "style.safetensors"
    write_embedding(style_path, torch.ones(1, 768), torch.ones(1, 1280))
    torch.save({"string_to_param": {"*": torch.full((2, 768), 3.0)}, "name": "old"}, tmp_path / "a1111.pt")
    torch.save({"clip_l": torch.zeros(4, 768), "clip_g": torch.ones(4, 1280)}, tmp_path / "sdxl.bin")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    lookup = EmbeddingLookup([tmp_path / "sub"])
    assert lookup.find_file("style") == tmp_path / "sub" / "deeper" / "style.safetensors"
    assert lookup.find_file("style.safetensors") == tmp_path / "sub" / "deeper" / "style.safetensors"
    assert lookup.find_file("../outside") is None  # no escaping a search folder
    assert lookup.get("style", "clip_g").shape == (1, 1280)
    assert lookup.get("missing", "clip_l") is None
    root = EmbeddingLookup([tmp_path])
    assert torch.equal(root.get("a1111", "clip_l"), torch.full((2, 768), 3.0))
    assert torch.equal(root.get("sdxl", "clip_g"), torch.ones(4, 1280))
    assert torch.equal(root.get("sdxl.bin", "clip_l"), torch.zeros(4, 768))
    assert root.get("outside", "clip_l") is None  # unreadable file: warning, None


def test_clip_g_side_is_tokenized_like_clip_l(models, tokenizers):
    # tokenizer_2 treats "!" as its pad token; Fooocus tokenizes both sides with the plain CLIP tokenizer.
    encoder = make_encoder(models, tokenizers)
    cond, _ = encoder.encode_item("wow!")
    ids = tokenizers[0]("wow!")["input_ids"]
    assert 0 not in ids
    assert torch.equal(cond[..., DIM_L:], raw_hidden(models[1], [padded(ids, 0)]))
