"""Sharpness filter, Fooocus CFG (+ mimicking) and ADM size conditioning (§2.8, §2.9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from foci.guidance.adm import (
    fooocus_adm_vector,
    fourier_embedding,
    refiner_time_ids,
    round_to_64,
    sdxl_size_time_ids,
    select_adm_half,
    use_emphasized_adm,
)
from foci.guidance.cfg import fooocus_guidance, guidance_progress, mimicked_cfg
from foci.guidance.sharpness import anisotropic_filter, gaussian_kernel_1d, joint_bilateral_blur


def _gauss_1d_f64(size: int = 13, sigma: float = 3.0) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - size // 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _reflect(index: int, n: int) -> int:
    if index < 0:
        return -index
    if index > n - 1:
        return 2 * (n - 1) - index
    return index


def _manual_bilateral(x: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """Loop-by-loop float64 joint bilateral filter (L1 colour distance, 13×13, σ 3/3, reflect)."""
    batch, channels, height, width = x.shape
    g1 = _gauss_1d_f64()
    out = np.zeros_like(x)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                num = np.zeros(channels)
                den = 0.0
                for dy in range(-6, 7):
                    for dx in range(-6, 7):
                        ii, jj = _reflect(i + dy, height), _reflect(j + dx, width)
                        l1 = np.abs(guide[b, :, ii, jj] - guide[b, :, i, j]).sum()
                        w = g1[dy + 6] * g1[dx + 6] * math.exp(-0.5 * l1**2 / 9.0)
                        num += w * x[b, :, ii, jj]
                        den += w
                out[b, :, i, j] = num / den
    return out


# ----------------------------------------------------------------------------------------- sharpness


def test_gaussian_kernel_matches_formula():
    k = gaussian_kernel_1d(13, 3.0, dtype=torch.float32)
    np.testing.assert_allclose(k.numpy(), _gauss_1d_f64(), rtol=1e-6)
    assert k[6].item() == pytest.approx(0.13702282, rel=1e-6)  # 1 / Σ exp(-x²/18)


def test_constant_guide_is_pure_gaussian_blur_with_reflect_padding():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 10, 11, generator=gen)
    guide = torch.full_like(x, 0.7)
    out = anisotropic_filter(x, guide)
    g1 = torch.tensor(_gauss_1d_f64())
    kernel = (g1[:, None] * g1[None, :]).expand(4, 1, 13, 13)
    ref = F.conv2d(F.pad(x.double(), (6, 6, 6, 6), mode="reflect"), kernel, groups=4)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


def test_reflect_padding_at_corner_exact_value():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 1] = 1.0
    out = joint_bilateral_blur(x, torch.zeros_like(x))
    g = _gauss_1d_f64()
    # (0,0)'s window sees pixel (1,1) four times: offsets dy, dx in {-1, +1} all reflect onto index 1.
    assert out[0, 0, 0, 0].item() == pytest.approx(4 * g[5] * g[7], rel=1e-5)
    # A zero-padded or replicate-padded filter would give g[7]**2 or a different count.
    assert out[0, 0, 0, 0].item() != pytest.approx(g[7] ** 2, rel=1e-3)


def test_filter_matches_loop_reimplementation_including_edges():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 9, generator=gen)
    guide = torch.randn(2, 3, 7, 9, generator=gen) * 0.5 + 2.0
    out = anisotropic_filter(x, guide)
    g = guide.double()
    std, mean = torch.std_mean(g, dim=(1, 2, 3), keepdim=True)
    normalised = ((g - mean) / (std + 1e-5)).numpy()
    ref = _manual_bilateral(x.double().numpy(), normalised)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5)
    # a hand-checked interior 3×3 patch, stated explicitly
    np.testing.assert_allclose(out[1, 2, 2:5, 3:6].numpy(), ref[1, 2, 2:5, 3:6], rtol=0, atol=2e-5)


def test_guide_normalisation_uses_unbiased_std_per_sample():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 8, 8, generator=gen)
    guide = torch.randn(1, 2, 8, 8, generator=gen)
    # The filter is invariant to an affine change of the guide because the guide is standardised.
    torch.testing.assert_close(anisotropic_filter(x, guide), anisotropic_filter(x, guide * 5.0 + 3.0),
                               rtol=0, atol=1e-4)
    biased = joint_bilateral_blur(x, (guide - guide.mean()) / (guide.std(unbiased=False) + 1e-5))
    unbiased = joint_bilateral_blur(x, (guide - guide.mean()) / (guide.std(unbiased=True) + 1e-5))
    torch.testing.assert_close(anisotropic_filter(x, guide), unbiased, rtol=0, atol=1e-6)
    assert (anisotropic_filter(x, guide) - biased).abs().max() > 1e-4


def test_edges_in_guide_are_preserved_better_than_by_gaussian_blur():
    x = torch.zeros(1, 4, 16, 16)
    x[..., 8:] = 1.0
    edge_aware = anisotropic_filter(x, x)
    plain = anisotropic_filter(x, torch.zeros_like(x))
    assert (edge_aware - x).abs().max() < 0.5 * (plain - x).abs().max()


# ----------------------------------------------------------------------------------------- CFG


def _tensors(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 9, 9, generator=gen) * 3
    x0p = torch.randn(1, 4, 9, 9, generator=gen)
    x0n = torch.randn(1, 4, 9, 9, generator=gen)
    return x, x0p, x0n


def test_guidance_progress_float32():
    assert guidance_progress(999) == 0.0
    assert guidance_progress(0) == 1.0
    expected = float(np.float32(1.0) - np.float32(716) / np.float32(999))
    assert guidance_progress(716) == expected
    assert expected != 1 - 716 / 999  # the float32 rounding is what Fooocus sees


def test_fooocus_guidance_without_mimicking_matches_hand_formula():
    x, x0p, x0n = _tensors()
    p = guidance_progress(334)
    out = fooocus_guidance(x, x0p, x0n, cfg_scale=4.0, sharpness=2.0, mimic_scale=7.0, progress=p)
    eps_p, eps_n = x - x0p, x - x0n
    alpha = 0.001 * 2.0 * p
    eps_p_sharp = alpha * anisotropic_filter(eps_p, x0p) + (1 - alpha) * eps_p
    expected = x - (eps_n + 4.0 * (eps_p_sharp - eps_n))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # sharpness really acts: differs from plain CFG
    plain = x0n + 4.0 * (x0p - x0n)
    assert (out - plain).abs().max() > 1e-4


def test_fooocus_guidance_with_mimicking_matches_hand_formula():
    x, x0p, x0n = _tensors(4)
    p = 0.3
    out = fooocus_guidance(x, x0p, x0n, cfg_scale=10.0, sharpness=2.0, mimic_scale=7.0, progress=p)
    eps_p, eps_n = x - x0p, x - x0n
    alpha = 0.001 * 2.0 * p
    eps_p_sharp = alpha * anisotropic_filter(eps_p, x0p) + (1 - alpha) * eps_p
    real = eps_n + 10.0 * (eps_p_sharp - eps_n)
    mimic = eps_n + 7.0 * (eps_p_sharp - eps_n)
    expected = x - (p * real + (1 - p) * mimic)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # effective scale is 7 + 3p = 7.9, not 10
    no_mimic = fooocus_guidance(x, x0p, x0n, cfg_scale=10.0, sharpness=2.0, mimic_scale=10.0, progress=p)
    assert (out - no_mimic).abs().max() > 0.1


def test_mimicking_requires_cfg_strictly_above_mimic():
    u, c = torch.zeros(3), torch.ones(3)

    def run(cfg: float, p: float) -> torch.Tensor:
        return mimicked_cfg(u, c, cfg_scale=cfg, mimic_scale=7.0, progress=p)

    assert torch.equal(run(7.0, 0.0), torch.full((3,), 7.0))
    assert torch.equal(run(9.0, 0.0), torch.full((3,), 7.0))
    assert torch.equal(run(9.0, 1.0), torch.full((3,), 9.0))
    torch.testing.assert_close(run(9.0, 0.25), torch.full((3,), 7.5))


@pytest.mark.parametrize(("sharpness", "progress"), [(0.0, 0.8), (2.0, 0.0)])
def test_alpha_zero_is_plain_cfg(sharpness: float, progress: float):
    x, x0p, x0n = _tensors(5)
    out = fooocus_guidance(x, x0p, x0n, cfg_scale=4.0, sharpness=sharpness, mimic_scale=7.0,
                           progress=progress)
    torch.testing.assert_close(out, x0n + 4.0 * (x0p - x0n), rtol=0, atol=1e-5)
    assert torch.equal(out, x - ((x - x0n) + 4.0 * ((x - x0p) - (x - x0n))))


# ----------------------------------------------------------------------------------------- ADM


def test_round_to_64():
    assert [round_to_64(v) for v in (896, 1152, 1000, 31, 33, 1120, 1056, 992)] == [
        896, 1152, 1024, 0, 64, 1152, 1024, 1024]  # 1056/64 = 16.5 rounds half to even -> 16


def test_sdxl_size_time_ids_positive_and_negative():
    emph, cons = sdxl_size_time_ids(1152, 896, scale=1.5)
    assert emph == [1344.0, 1728.0, 0.0, 0.0, 896.0, 1152.0]
    assert cons == [896.0, 1152.0, 0.0, 0.0, 896.0, 1152.0]
    emph, cons = sdxl_size_time_ids(1152, 896, scale=0.8)
    assert emph == [716.0, 921.0, 0.0, 0.0, 896.0, 1152.0]  # 716.8 and 921.6 truncated
    assert cons == [896.0, 1152.0, 0.0, 0.0, 896.0, 1152.0]
    emph, cons = sdxl_size_time_ids(1000, 1000, scale=1.0)
    assert emph == [1000.0, 1000.0, 0.0, 0.0, 1024.0, 1024.0]
    assert cons == [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]


def test_refiner_time_ids():
    assert refiner_time_ids(1152, 896, aesthetic_score=6.0) == [896.0, 1152.0, 0.0, 0.0, 6.0]
    assert refiner_time_ids(1152, 896, aesthetic_score=2.5) == [896.0, 1152.0, 0.0, 0.0, 2.5]


def test_emphasized_adm_switch():
    assert use_emphasized_adm(716, 0.3)
    assert use_emphasized_adm(700, 0.3)
    assert not use_emphasized_adm(699, 0.3)
    assert not use_emphasized_adm(672, 0.3)
    assert not use_emphasized_adm(999, 0.0)  # restricted performances: never
    assert use_emphasized_adm(1, 1.0) and not use_emphasized_adm(0, 1.0)
    y = torch.arange(8.0)[None]
    assert torch.equal(select_adm_half(y, 716), y[:, :4])
    assert torch.equal(select_adm_half(y, 672), y[:, 4:])


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1), use_linear_projection=True, norm_num_groups=8,
        cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + 1280,
    ).eval()


def test_fourier_embedding_equals_diffusers_add_time_proj(tiny_unet):
    values = [1344.0, 1728.0, 0.0, 0.0, 896.0, 1152.0]
    ours = fourier_embedding(values)
    theirs = tiny_unet.add_time_proj(torch.tensor(values)).flatten()
    assert ours.shape == (6 * 256,)
    assert torch.equal(ours, theirs)
    assert ours[0].item() == pytest.approx(math.cos(1344.0))  # cos first
    assert ours[128].item() == pytest.approx(math.sin(1344.0), abs=1e-4)  # then sin


def test_fooocus_adm_vector_is_two_diffusers_conditionings(tiny_unet):
    gen = torch.Generator().manual_seed(6)
    pooled = torch.randn(2, 1280, generator=gen)
    y = fooocus_adm_vector(pooled, 1152, 896, scale=0.8)
    assert y.shape == (2, 5632)
    emph, cons = sdxl_size_time_ids(1152, 896, scale=0.8)
    captured: list[torch.Tensor] = []
    handle = tiny_unet.add_embedding.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    for half, ids in ((y[:, :2816], emph), (y[:, 2816:], cons)):
        captured.clear()
        with torch.no_grad():
            tiny_unet(torch.zeros(2, 4, 8, 8), 500, encoder_hidden_states=torch.zeros(2, 3, 32),
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([ids, ids])})
        assert torch.equal(captured[0], half)
    handle.remove()
