"""Model sampling tables and noise schedules (§2.6)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from foci.sampling.model_sampling import (
    DiscreteSampling,
    DistilledSampling,
    EDMSampling,
    kohya_schedule,
    native_model_sampling,
    select_model_sampling,
)
from foci.sampling.schedulers import (
    AYS_SDXL_NOISE_LEVELS,
    SCHEDULER_NAMES,
    brownian_tree_range,
    compute_sigmas,
    sampler_scheduler,
    schedule_sigmas,
)
from foci.task import SCHEDULERS

DISCRETE = DiscreteSampling()
TABLE = DISCRETE.sigmas

# §2.6: discrete timesteps the UNet sees in the default 30-step Karras run.
KARRAS_30_TIMESTEPS = [
    999, 975, 949, 923, 894, 863, 830, 795, 757, 716, 672, 624, 572, 517, 458, 397, 334, 273, 214, 162, 117,
    80, 53, 33, 20, 11, 6, 3, 1, 0,
]


def test_scheduler_names_match_task_record() -> None:
    assert SCHEDULER_NAMES == SCHEDULERS
    assert len(SCHEDULER_NAMES) == 11


def test_discrete_table_matches_kohya_precision() -> None:
    assert TABLE.dtype == torch.float32 and TABLE.shape == (1000,)
    assert torch.all(TABLE[1:] > TABLE[:-1])
    assert round(DISCRETE.sigma_min, 7) == 0.0291672 and round(DISCRETE.sigma_max, 6) == 14.614641
    assert DISCRETE.sigma_min == pytest.approx(0.02916715853, rel=1e-6)
    assert DISCRETE.sigma_max == pytest.approx(14.61464119, rel=1e-6)
    _, alphas_cumprod = kohya_schedule()
    assert torch.allclose(alphas_cumprod, 1 / (1 + TABLE.double() ** 2).float(), rtol=1e-6)


def test_discrete_timestep_is_nearest_index_and_sigma_interpolates_log() -> None:
    assert DISCRETE.timestep(TABLE[[0, 17, 500, 999]]).tolist() == [0.0, 17.0, 500.0, 999.0]
    assert DISCRETE.timestep(TABLE[:3]).dtype == torch.float32
    # Halfway in log space between entries 10 and 11 (slightly nearer 11 after float rounding either way).
    assert DISCRETE.timestep(TABLE[10] * 1.0001).item() == 10.0
    assert DISCRETE.sigma(torch.tensor(500.0)).item() == pytest.approx(TABLE[500].item(), rel=1e-6)
    expected = math.exp(0.75 * math.log(TABLE[40].item()) + 0.25 * math.log(TABLE[41].item()))
    assert DISCRETE.sigma(torch.tensor(40.25)).item() == pytest.approx(expected, rel=1e-6)
    # sigma 0 maps to timestep 0 without NaN
    assert DISCRETE.timestep(torch.tensor([0.0])).tolist() == [0.0]


def test_discrete_preconditioning_eps_and_v() -> None:
    x = torch.full((1, 4, 2, 2), 3.0)
    out = torch.full((1, 4, 2, 2), 0.5)
    sigma = torch.tensor([2.0])
    assert torch.allclose(DISCRETE.scale_input(x, sigma), x / math.sqrt(5.0))
    assert torch.allclose(DISCRETE.to_denoised(out, x, sigma), x - 2.0 * out)
    v_model = DiscreteSampling("v")
    assert torch.allclose(v_model.to_denoised(out, x, sigma), x / 5.0 - out * 2.0 / math.sqrt(5.0))
    with pytest.raises(ValueError):
        DiscreteSampling("x0")  # type: ignore[arg-type]


def test_karras_30_steps_matches_fooocus_default_run() -> None:
    sigmas = compute_sigmas(DISCRETE, "karras", 30)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (31,)
    assert [round(v, 2) for v in sigmas[:3].tolist()] == [14.61, 12.66, 10.93]
    assert [round(v, 4) for v in sigmas[-4:].tolist()] == [0.0564, 0.0409, 0.0292, 0.0]
    assert DISCRETE.timestep(sigmas[:-1]).long().tolist() == KARRAS_30_TIMESTEPS


def test_schedulers_endpoints_and_lengths() -> None:
    n = 30
    normal = compute_sigmas(DISCRETE, "normal", n)
    assert len(normal) == n + 1 and normal[-1] == 0
    assert normal[0].item() == pytest.approx(TABLE[999].item(), rel=1e-6)
    assert normal[-2].item() == pytest.approx(TABLE[0].item(), rel=1e-6)

    exponential = compute_sigmas(DISCRETE, "exponential", n)
    assert len(exponential) == n + 1 and exponential[-1] == 0
    assert exponential[0].item() == pytest.approx(DISCRETE.sigma_max, rel=1e-6)
    assert exponential[-2].item() == pytest.approx(DISCRETE.sigma_min, rel=1e-6)
    ratios = exponential[1:-1] / exponential[:-2]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-5)

    sgm = compute_sigmas(DISCRETE, "sgm_uniform", n)
    assert len(sgm) == n + 1 and sgm[-1] == 0
    assert sgm[0].item() == pytest.approx(TABLE[999].item(), rel=1e-6)
    # last kept timestep is 999/30 = 33.3: interpolate between entries 33 and 34
    w = 999 / 30 - 33
    expected = math.exp((1 - w) * math.log(TABLE[33].item()) + w * math.log(TABLE[34].item()))
    assert sgm[-2].item() == pytest.approx(expected, rel=1e-5)

    simple = compute_sigmas(DISCRETE, "simple", n)
    assert len(simple) == n + 1 and simple[-1] == 0
    assert simple[0] == TABLE[999] and simple[1] == TABLE[-(1 + 33)] and simple[-2] == TABLE[-(1 + 966)]

    ddim = compute_sigmas(DISCRETE, "ddim_uniform", n)
    # indices 1, 34, …, 991: 31 steps for 30 asked, as in the reference
    assert len(ddim) == 32 and ddim[-1] == 0
    assert ddim[0] == TABLE[991] and ddim[-2] == TABLE[1]

    turbo = schedule_sigmas(DISCRETE, "turbo", 4)
    assert torch.allclose(turbo, torch.cat([TABLE[[999, 899, 799, 699]], torch.zeros(1)]), rtol=1e-6)
    assert len(schedule_sigmas(DISCRETE, "turbo", 30)) == 11  # at most 10 turbo steps

    ays10 = schedule_sigmas(DISCRETE, "align_your_steps", 10)
    assert torch.equal(ays10, torch.tensor([*AYS_SDXL_NOISE_LEVELS[:-1], 0.0], dtype=torch.float32))
    ays30 = schedule_sigmas(DISCRETE, "align_your_steps", n)
    assert len(ays30) == n + 1 and ays30[-1] == 0
    # log-linear interpolation keeps the original levels at every third point
    kept = torch.tensor(AYS_SDXL_NOISE_LEVELS[:-1], dtype=torch.float32)
    assert torch.allclose(ays30[0:30:3], kept, rtol=1e-6)
    assert ays30[1].item() == pytest.approx(
        math.exp((2 * math.log(AYS_SDXL_NOISE_LEVELS[0]) + math.log(AYS_SDXL_NOISE_LEVELS[1])) / 3), rel=1e-6
    )

    for name in SCHEDULER_NAMES:
        sampling, actual = select_model_sampling(name)
        for steps in (1, 2, 7):
            sigmas = compute_sigmas(sampling, actual, steps)
            assert sigmas[-1] == 0 and torch.all(sigmas[:-1] > 0), (name, steps)
            assert torch.all(sigmas[1:] <= sigmas[:-1]), (name, steps)
            assert sigmas.dtype == torch.float32


def test_penultimate_sigma_dropped_for_dpm2_and_unipc() -> None:
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        longer = schedule_sigmas(DISCRETE, "karras", 9)
        got = compute_sigmas(DISCRETE, "karras", 8, sampler=sampler)
        assert len(got) == 9
        assert torch.equal(got, torch.cat([longer[:-2], longer[-1:]]))
    euler = compute_sigmas(DISCRETE, "karras", 8, sampler="euler")
    assert torch.equal(euler, schedule_sigmas(DISCRETE, "karras", 8))


def test_partial_denoise_keeps_tail_of_longer_schedule() -> None:
    full = compute_sigmas(DISCRETE, "karras", 20)
    assert torch.equal(compute_sigmas(DISCRETE, "karras", 10, denoise=0.5), full[-11:])
    assert torch.equal(compute_sigmas(DISCRETE, "normal", 10, denoise=0.3),
                       compute_sigmas(DISCRETE, "normal", 33)[-11:])
    full_10 = compute_sigmas(DISCRETE, "karras", 10)
    assert torch.equal(compute_sigmas(DISCRETE, "karras", 10, denoise=1.0), full_10)
    # dpm_2 drop happens on the long schedule, then truncation
    long_dpm2 = compute_sigmas(DISCRETE, "karras", 20, sampler="dpm_2")
    assert torch.equal(compute_sigmas(DISCRETE, "karras", 10, sampler="dpm_2", denoise=0.5), long_dpm2[-11:])
    with pytest.raises(ValueError):
        compute_sigmas(DISCRETE, "karras", 10, denoise=0.0)


def test_unknown_scheduler_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="karras.*align_your_steps"):
        compute_sigmas(DISCRETE, "fancy", 10)


def test_select_model_sampling_remaps() -> None:
    sampling, name = select_model_sampling("lcm")
    assert isinstance(sampling, DistilledSampling) and sampling.mode == "lcm" and name == "sgm_uniform"
    sampling, name = select_model_sampling("tcd")
    assert isinstance(sampling, DistilledSampling) and sampling.mode == "tcd" and name == "sgm_uniform"
    sampling, name = select_model_sampling("edm_playground_v2.5")
    assert isinstance(sampling, EDMSampling) and name == "karras"
    assert sampling.sigma_max == pytest.approx(120.0, rel=1e-5)
    sampling, name = select_model_sampling("normal", "edm")
    assert isinstance(sampling, EDMSampling) and name == "normal"
    assert sampling.sigma_max == pytest.approx(80.0, rel=1e-5)
    sampling, name = select_model_sampling("karras", "v")
    assert type(sampling) is DiscreteSampling and sampling.prediction == "v" and name == "karras"


def _nudged(value: torch.Tensor, ulps: int) -> torch.Tensor:
    """``value`` moved by ``ulps`` float32 steps (what another CPU's ``log``/``exp`` kernel may return)."""
    for _ in range(abs(ulps)):
        value = torch.nextafter(value, torch.tensor(math.copysign(math.inf, ulps), dtype=value.dtype))
    return value


def test_distilled_lcm_table_and_timesteps() -> None:
    """The 4-step LCM schedule meets an exact tie, resolved as the reference's ``argmin``: first index.

    sgm_uniform puts a timestep at 509 = 19 + 20·24.5, exactly halfway in log space between distilled entries
    24 and 25, so both distances are mathematically equal and the reference's ``argmin`` keeps entry 24
    (timestep 499). In float32 the tie is decided by the last bit of ``log``, which depends on the CPU's vector
    kernels (an AMX Xeon gave 519). The test therefore does not rely on this CPU's rounding: it replays every
    one-ulp variation of the two table logs and of the sigma and requires 499 for all of them.
    """
    lcm = DistilledSampling("lcm")
    assert lcm.sigmas.shape == (50,)
    assert torch.equal(lcm.sigmas, TABLE[19::20])
    assert lcm.timestep(lcm.sigmas).long().tolist() == list(range(19, 1000, 20))
    assert lcm.sigma(torch.tensor(999.0)).item() == pytest.approx(TABLE[999].item(), rel=1e-6)
    sigmas = compute_sigmas(lcm, "sgm_uniform", 4)
    assert lcm.timestep(sigmas[:-1]).long().tolist() == [999, 759, 499, 259]
    assert len(lcm.alphas_cumprod) == 1000  # TCD indexes the full table

    plain_argmin_flips = False
    for low_ulps, high_ulps, sigma_ulps in itertools.product((-1, 0, 1), repeat=3):
        probe = copy.copy(lcm)
        probe.log_sigmas = lcm.log_sigmas.clone()
        probe.log_sigmas[24] = _nudged(lcm.log_sigmas[24], low_ulps)
        probe.log_sigmas[25] = _nudged(lcm.log_sigmas[25], high_ulps)
        sigma = _nudged(sigmas[2], sigma_ulps).reshape(1)
        assert probe.timestep(sigma).long().tolist() == [499], (low_ulps, high_ulps, sigma_ulps)
        plain = (sigma.log() - probe.log_sigmas[:, None]).abs().argmin(dim=0)
        plain_argmin_flips = plain_argmin_flips or plain.item() == 25
    assert plain_argmin_flips  # a bare float32 argmin would give 519 for some of these roundings


def test_ksampler_runs_normal_for_turbo_and_align_your_steps() -> None:
    """§2.6 lists ``turbo``/``align_your_steps`` among Fooocus's schedulers, but only its Brownian-tree sizing
    calls that scheduler function. The sampler loop is ComfyUI's ``KSampler``, whose scheduler list holds just
    ``normal, karras, exponential, sgm_uniform, simple, ddim_uniform`` and which replaces any other name by the
    first, ``normal`` — so in Fooocus 2.5.5 both names sample on the ``normal`` schedule (penultimate drop for
    dpm_2/uni_pc included). ``fooocus_scheduler_fallback=False`` runs the named schedule instead.
    """
    assert sampler_scheduler("turbo") == sampler_scheduler("align_your_steps") == "normal"
    assert sampler_scheduler("lcm") == "sgm_uniform" and sampler_scheduler("edm_playground_v2.5") == "karras"
    assert sampler_scheduler("karras") == "karras"
    for scheduler in ("turbo", "align_your_steps"):
        for sampler in ("dpm_2", "euler", "uni_pc"):
            for steps in (4, 8, 30):
                got = compute_sigmas(DISCRETE, scheduler, steps, sampler=sampler)
                assert torch.equal(got, compute_sigmas(DISCRETE, "normal", steps, sampler=sampler))
    # normal at 4 steps: timesteps linspace(999, 0, 4) = 999, 666, 333, 0 -> table entries, then 0
    euler = compute_sigmas(DISCRETE, "turbo", 4)
    assert euler.tolist() == pytest.approx([*TABLE[[999, 666, 333, 0]].tolist(), 0.0], rel=1e-6)
    # dpm_2 at 8 steps: normal over 9 points (999 - 124.875·k) with the penultimate (t = 0) dropped; 499.5 is
    # an exact tie between entries 499 and 500, resolved to the first as in the LCM test below
    dpm2 = compute_sigmas(DISCRETE, "align_your_steps", 8, sampler="dpm_2")
    assert DISCRETE.timestep(dpm2[:-1]).long().tolist() == [999, 874, 749, 624, 499, 375, 250, 125]
    turbo = compute_sigmas(DISCRETE, "turbo", 8, fooocus_scheduler_fallback=False)
    assert torch.equal(turbo, schedule_sigmas(DISCRETE, "turbo", 8))


def test_brownian_tree_range_follows_fooocus_own_schedule() -> None:
    """§2.7: the tree spans ``min(σ > 0)…max(σ)`` of the schedule Fooocus computes *before* sampling
    (``default_pipeline.calculate_sigmas``): the real turbo/AYS values, the penultimate drop only for dpm_2, on
    the model's native sampling — for Playground v2.5 that is EDM 0.002…80 (the 0.002…120 sampling of the
    ``edm_playground_v2.5`` scheduler is only patched in when the sampler loads the model)."""
    discrete = native_model_sampling("eps")
    low, high = brownian_tree_range(discrete, "turbo", 8, sampler="dpmpp_2m_sde_gpu")
    assert (low, high) == pytest.approx((TABLE[299].item(), TABLE[999].item()), rel=1e-6)
    low, _ = brownian_tree_range(discrete, "turbo", 8, sampler="dpm_2")  # 9 turbo steps, penultimate dropped
    assert low == pytest.approx(TABLE[299].item(), rel=1e-6)
    low, _ = brownian_tree_range(discrete, "align_your_steps", 10, sampler="dpmpp_sde")
    assert low == pytest.approx(AYS_SDXL_NOISE_LEVELS[-2], rel=1e-6)
    low, high = brownian_tree_range(discrete, "karras", 30, sampler="dpmpp_2m_sde_gpu")
    assert (low, high) == pytest.approx((DISCRETE.sigma_min, DISCRETE.sigma_max), rel=1e-6)

    playground = native_model_sampling("edm")
    low, high = brownian_tree_range(playground, "edm_playground_v2.5", 30, sampler="dpmpp_2m_sde_gpu")
    assert (low, high) == pytest.approx((0.002, 80.0), rel=1e-5)
    sampling, name = select_model_sampling("edm_playground_v2.5", "edm")
    assert compute_sigmas(sampling, name, 30)[0].item() == pytest.approx(120.0, rel=1e-5)


def test_lcm_boundary_condition_and_tcd_plain_eps() -> None:
    lcm = DistilledSampling("lcm")
    x = torch.full((1, 4, 2, 2), 2.0)
    out = torch.full((1, 4, 2, 2), 0.25)
    sigma = TABLE[[19]]  # timestep 19 -> scaled 190
    x0 = 2.0 - 0.25 * sigma.item()
    c_skip = 0.25 / (190.0**2 + 0.25)
    c_out = 190.0 / math.sqrt(190.0**2 + 0.25)
    assert torch.allclose(lcm.to_denoised(out, x, sigma), torch.full_like(x, c_out * x0 + c_skip * 2.0))
    tcd = DistilledSampling("tcd")
    assert torch.allclose(tcd.to_denoised(out, x, sigma), torch.full_like(x, x0))


def test_edm_sampling_range_and_preconditioning() -> None:
    edm = EDMSampling(0.002, 120.0, 0.5)
    assert edm.sigma_min == pytest.approx(0.002, rel=1e-5)
    assert edm.sigma_max == pytest.approx(120.0, rel=1e-5)
    sigma = torch.tensor([3.0])
    assert edm.timestep(sigma).item() == pytest.approx(0.25 * math.log(3.0), rel=1e-6)
    assert edm.sigma(edm.timestep(sigma)).item() == pytest.approx(3.0, rel=1e-6)
    x = torch.full((1, 4, 2, 2), 2.0)
    out = torch.full((1, 4, 2, 2), -1.0)
    assert torch.allclose(edm.scale_input(x, sigma), x / math.sqrt(9.25))
    expected = 2.0 * 0.25 / 9.25 + (-1.0) * 3.0 * 0.5 / math.sqrt(9.25)
    assert torch.allclose(edm.to_denoised(out, x, sigma), torch.full_like(x, expected))
    sampling, name = select_model_sampling("edm_playground_v2.5")
    sigmas = compute_sigmas(sampling, name, 30)
    assert sigmas[0].item() == pytest.approx(120.0, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-5)
