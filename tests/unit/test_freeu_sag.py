"""FreeU V2 hooks, Perp-Neg and Self-Attention Guidance on a tiny SDXL-like UNet (§2.19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from foci.guidance.freeu import FreeU, _backbone_channels, fourier_filter, scale_backbone
from foci.guidance.perp_neg import perp_neg_guidance
from foci.guidance.sag import (
    AttentionRecordingProcessor,
    SelfAttentionGuidance,
    degrade_by_attention,
    gaussian_blur,
)

CROSS_DIM, POOLED, ADD_T = 32, 40, 8


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    """Three levels (32, 64, 128) so both FreeU stages (4·32 and 2·32 channels) exist, like SDXL."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=2, attention_head_dim=(2, 4, 8),
        transformer_layers_per_block=(1, 1, 1), use_linear_projection=True, norm_num_groups=8,
        cross_attention_dim=CROSS_DIM, addition_embed_type="text_time", addition_time_embed_dim=ADD_T,
        projection_class_embeddings_input_dim=6 * ADD_T + POOLED,
    ).eval()


def _conditioning(batch: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder_hidden_states": torch.randn(batch, 5, CROSS_DIM, generator=gen),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, POOLED, generator=gen),
            "time_ids": torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * batch),
        },
    }


def _latent(batch: int = 1, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _run(unet: UNet2DConditionModel, sample: torch.Tensor, cond: dict) -> torch.Tensor:
    return unet(sample, 500, **cond).sample


# ----------------------------------------------------------------------------------------- FreeU


def test_fourier_filter_scales_only_the_centre_frequencies():
    const = torch.full((1, 2, 8, 8), 2.0)
    torch.testing.assert_close(fourier_filter(const, threshold=1, scale=0.5), torch.full((1, 2, 8, 8), 1.0))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # Nyquist only
    checker = checker.expand(1, 2, 8, 8)
    torch.testing.assert_close(fourier_filter(checker, threshold=1, scale=0.5), checker)
    # The scaled square is [c−1, c+1) after fftshift: frequencies −1 and 0, not +1. A cosine of frequency 1
    # has its −1 half scaled and its +1 half kept, so it comes back scaled by (s + 1) / 2.
    wave = torch.cos(2 * torch.pi * torch.arange(8.0) / 8)[:, None].expand(1, 1, 8, 8)
    torch.testing.assert_close(fourier_filter(wave, threshold=1, scale=0.5), 0.75 * wave)
    half = fourier_filter(const.half(), threshold=1, scale=0.5)
    assert half.dtype == torch.float16


def test_scale_backbone_hand_values():
    h = torch.tensor([[[[1.0, 3.0]], [[3.0, 5.0]], [[5.0, 7.0]], [[7.0, 9.0]]]])  # [1, 4, 1, 2]
    # channel mean = [4, 6] -> min-max normalised [0, 1]; first 2 channels scaled by (b-1)·m + 1 = [1, 1.5]
    out = scale_backbone(h, 1.5)
    expected = h.clone()
    expected[0, :2, 0, 1] *= 1.5
    assert torch.equal(out, expected)
    assert torch.equal(h[0, 0, 0], torch.tensor([1.0, 3.0]))  # input untouched


def test_backbone_channel_bookkeeping_matches_sdxl_pattern(unet):
    assert [c for _, c in _backbone_channels(unet)] == [128, 128, 128, 128, 64, 64, 64, 32, 32]


def test_freeu_hook_transforms_the_resnet_input_exactly(unet):
    target = unet.up_blocks[0].resnets[0]
    captured: list[torch.Tensor] = []
    sample, cond = _latent(), _conditioning(1)
    freeu = FreeU(unet, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    freeu.attach()
    handle = target.register_forward_pre_hook(lambda m, a: captured.append(a[0]))  # runs after FreeU's hook
    try:
        _run(unet, sample, cond)
        freeu.detach()
        _run(unet, sample, cond)
    finally:
        handle.remove()
        freeu.detach()
    modified, original = captured
    h, skip = original[:, :128], original[:, 128:]
    expected = torch.cat([scale_backbone(h, 1.3), fourier_filter(skip, threshold=1, scale=0.9)], dim=1)
    assert torch.equal(modified, expected)


def test_freeu_changes_output_and_detach_restores_bit_exactly(unet):
    sample, cond = _latent(2), _conditioning(2)
    before = _run(unet, sample, cond)
    with FreeU(unet) as freeu:  # Fooocus defaults 1.01 / 1.02 / 0.99 / 0.95
        hooked = [r for block in unet.up_blocks for r in block.resnets if r._forward_pre_hooks]
        assert freeu.attached and len(hooked) == 7
        during = _run(unet, sample, cond)
    after = _run(unet, sample, cond)
    assert (during - before).abs().max() > 1e-4
    assert torch.equal(before, after)


def test_freeu_identity_scales_leave_output_unchanged(unet):
    sample, cond = _latent(), _conditioning(1)
    before = _run(unet, sample, cond)
    with FreeU(unet, b1=1.0, b2=1.0, s1=1.0, s2=1.0):
        during = _run(unet, sample, cond)
    torch.testing.assert_close(during, before, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- Perp-Neg


def test_perp_neg_hand_computed():
    zero = torch.zeros(1, 2)
    out = perp_neg_guidance(zero, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), zero,
                            cfg_scale=2.0, neg_scale=1.0)
    # pos = [1, 0]; neg = [1, 1]; perp = neg − (1/1)·pos = [0, 1]; 2·(pos − perp) = [2, −2]
    assert torch.equal(out, torch.tensor([[2.0, -2.0]]))


def test_perp_neg_with_empty_negative_is_plain_cfg():
    gen = torch.Generator().manual_seed(3)
    x, x0p, x0e = (torch.randn(2, 4, 6, 6, generator=gen) for _ in range(3))
    out = perp_neg_guidance(x, x0p, x0e, x0e, cfg_scale=5.0, neg_scale=1.0)
    assert torch.equal(out, x0e + 5.0 * (x0p - x0e))


def test_perp_neg_matches_eps_formula_and_ignores_parallel_negative():
    gen = torch.Generator().manual_seed(4)
    x, x0p, x0n, x0e = (torch.randn(1, 4, 6, 6, generator=gen) for _ in range(4))
    out = perp_neg_guidance(x, x0p, x0n, x0e, cfg_scale=6.0, neg_scale=0.7)
    e_pos, e_neg, e_emp = x - x0p, x - x0n, x - x0e
    pos, neg = e_pos - e_emp, e_neg - e_emp
    perp = neg - (neg * pos).sum() / (pos * pos).sum() * pos
    expected = x - (e_emp + 6.0 * (pos - 0.7 * perp))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    parallel = x0e + 3.0 * (x0p - x0e)  # negative along the positive direction: no perpendicular part
    torch.testing.assert_close(perp_neg_guidance(x, x0p, parallel, x0e, cfg_scale=6.0, neg_scale=0.7),
                               x0e + 6.0 * (x0p - x0e), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- SAG


def test_gaussian_blur_impulse_response_and_constant():
    gen1 = np.linspace(-4, 4, 9)
    pdf = np.exp(-0.5 * (gen1 / 2.0) ** 2)
    k = pdf / pdf.sum()
    impulse = torch.zeros(1, 1, 11, 11)
    impulse[0, 0, 5, 5] = 1.0
    np.testing.assert_allclose(gaussian_blur(impulse, kernel_size=9, sigma=2.0)[0, 0, 1:10, 1:10].numpy(),
                               np.outer(k, k), rtol=1e-5, atol=1e-8)
    const = torch.full((1, 3, 7, 7), 0.25)
    torch.testing.assert_close(gaussian_blur(const, kernel_size=9, sigma=2.0), const)


def test_degrade_mask_blurs_only_attended_blocks():
    x0 = _latent(1, 16, seed=5)
    blurred = gaussian_blur(x0, kernel_size=9, sigma=2.0)
    received = torch.zeros(1, 16)  # 4×4 attention grid for a 16×16 latent -> 4×4 pixel blocks
    received[0, 6] = 1.5  # grid cell (row 1, col 2) gets more than average attention
    out = degrade_by_attention(x0, received, 16, blur_sigma=2.0)
    assert torch.equal(out[..., 4:8, 8:12], blurred[..., 4:8, 8:12])
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[4:8, 8:12] = False
    assert torch.equal(out[..., keep], x0[..., keep])
    exactly_one = torch.ones(1, 16)  # threshold is strict (> 1.0)
    assert torch.equal(degrade_by_attention(x0, exactly_one, 16, blur_sigma=2.0), x0)


def test_recording_processor_matches_default_attention(unet):
    sample, cond = _latent(2), _conditioning(2)
    reference = _run(unet, sample, cond)
    module = unet.mid_block.attentions[0].transformer_blocks[0].attn1
    seen: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    hook = module.register_forward_pre_hook(grab, with_kwargs=True)
    sag = SelfAttentionGuidance(unet)
    try:
        with sag:
            recorded = _run(unet, sample, cond)
    finally:
        hook.remove()
    assert sag.recorder.received is None  # detach drops the recording
    torch.testing.assert_close(recorded, reference, rtol=0, atol=1e-5)
    hidden = seen[0]
    heads = module.heads
    q = module.to_q(hidden).reshape(2, -1, heads, module.inner_dim // heads).transpose(1, 2)
    k = module.to_k(hidden).reshape(2, -1, heads, module.inner_dim // heads).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1)  # [2, heads, queries, keys]
    expected = probs.mean(1).sum(1)
    with sag:
        _run(unet, sample, cond)
        torch.testing.assert_close(sag.recorder.received, expected.detach(), rtol=0, atol=1e-5)
        assert sag.recorder.query_length == 16  # 16×16 latent -> 4×4 mid block
        torch.testing.assert_close(sag.recorder.received.sum(-1), torch.full((2,), 16.0))


def test_attach_sets_only_the_mid_attn1_and_detach_restores(unet):
    before = dict(unet.attn_processors)
    sag = SelfAttentionGuidance(unet)
    sag.attach()
    during = unet.attn_processors
    name = "mid_block.attentions.0.transformer_blocks.0.attn1.processor"
    assert isinstance(during[name], AttentionRecordingProcessor)
    assert all(during[k] is v for k, v in before.items() if k != name)
    sag.detach()
    after = unet.attn_processors
    assert all(after[k] is v for k, v in before.items())


def _sag_step(unet, sag: SelfAttentionGuidance, size: int = 16):
    """One CFG step with the batch [positive, negative] and an eps-model x0 = x − σ·eps."""
    sigma = torch.tensor(2.0)
    x = _latent(1, size, seed=7) * sigma
    cond = _conditioning(2, seed=8)
    scaled = x / (sigma**2 + 1) ** 0.5
    eps = _run(unet, torch.cat([scaled, scaled]), cond)
    x0_pos, x0_neg = (x - sigma * eps).chunk(2)
    x0_cfg = x0_neg + 3.0 * (x0_pos - x0_neg)
    uncond = {"encoder_hidden_states": cond["encoder_hidden_states"][1:],
              "added_cond_kwargs": {k: v[1:] for k, v in cond["added_cond_kwargs"].items()}}
    calls: list[torch.Tensor] = []

    def evaluate_uncond(x_noised: torch.Tensor) -> torch.Tensor:
        calls.append(x_noised)
        return x_noised - sigma * _run(unet, x_noised / (sigma**2 + 1) ** 0.5, uncond)

    out = sag.apply(x=x, sigma=sigma, x0_uncond=x0_neg, x0_guided=x0_cfg, evaluate_uncond=evaluate_uncond)
    return out, x0_cfg, x0_neg, x, calls


def test_sag_scale_zero_returns_guided_and_nonzero_changes_it(unet):
    with SelfAttentionGuidance(unet, scale=0.0) as sag:
        out, x0_cfg, _, _, calls = _sag_step(unet, sag)
    assert torch.equal(out, x0_cfg) and len(calls) == 1
    with SelfAttentionGuidance(unet, scale=0.5) as sag:
        out, x0_cfg, x0_neg, x, calls = _sag_step(unet, sag)
    assert (out - x0_cfg).abs().max() > 1e-3
    # the re-noised input is degraded + (x − x0_uncond): it differs from x only where the mask blurred
    assert not torch.equal(calls[0], x)


def test_sag_uses_the_unconditional_chunk(unet):
    with SelfAttentionGuidance(unet, scale=0.5, uncond_index=1) as sag:
        _sag_step(unet, sag)  # leaves the recording of the batch-1 SAG call
        sag.recorder.received = torch.stack([torch.zeros(16), torch.full((16,), 2.0)])
        sag.recorder.query_length = 16
        x0 = _latent(1, 16, seed=9)
        captured: list[torch.Tensor] = []
        guided = x0 * 2.0

        def fake_uncond(t: torch.Tensor) -> torch.Tensor:
            captured.append(t)
            return torch.zeros_like(t)

        out = sag.apply(x=x0, sigma=torch.tensor(1.0), x0_uncond=x0, x0_guided=guided,
                        evaluate_uncond=fake_uncond)
    # every key over threshold in chunk 1 -> fully blurred; chunk 0 would have left x0 untouched
    blurred = gaussian_blur(x0, kernel_size=9, sigma=2.0)
    torch.testing.assert_close(captured[0], blurred + x0 - x0)
    # result = guided + (degraded − x0_sag)·scale
    torch.testing.assert_close(out, guided + (blurred - 0.0) * 0.5)


def test_sag_skips_tiny_latents_and_requires_attach(unet):
    sag = SelfAttentionGuidance(unet)
    x0 = _latent(1, 4)
    out = sag.apply(x=x0, sigma=torch.tensor(1.0), x0_uncond=x0, x0_guided=x0, evaluate_uncond=lambda t: t)
    assert out is x0
    big = _latent(1, 16)
    with pytest.raises(RuntimeError, match="attach"):
        sag.apply(x=big, sigma=torch.tensor(1.0), x0_uncond=big, x0_guided=big, evaluate_uncond=lambda t: t)
