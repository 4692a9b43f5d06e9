"""The 24 samplers and the Brownian-tree noise (§2.7).

Deterministic samplers are checked against the exact probability-flow ODE solution for Gaussian data
(x0 ~ N(mu, s²) per element), whose denoiser and ODE flow are known in closed form:
D(x, σ) = mu + s²/(s²+σ²)·(x − mu) and (x_σ − mu)/sqrt(s² + σ²) is constant along the flow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde

from foci.sampling.model_sampling import DiscreteSampling, ModelSampling, select_model_sampling
from foci.sampling.noise import NoiseSource
from foci.sampling.samplers import (
    SAMPLER_NAMES,
    Denoiser,
    StepInfo,
    _lms_coefficient,
    ancestral_step,
    run_sampler,
)
from foci.sampling.schedulers import SCHEDULER_NAMES, compute_sigmas, karras_sigmas
from foci.task import SAMPLERS

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde clamps rounded ends

MU, STD = 0.3, 0.5
SIGMA_MAX, SIGMA_END = 10.0, 0.05


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def exact_flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    return MU + (x - MU) * math.sqrt(STD**2 + sigma_to**2) / math.sqrt(STD**2 + sigma_from**2)


def noise_source(x: torch.Tensor, seed: int = 1, sigma_min: float = SIGMA_END,
                 sigma_max: float = SIGMA_MAX) -> NoiseSource:
    return NoiseSource(x, seed=seed, sigma_min=sigma_min, sigma_max=sigma_max,
                       generator=torch.Generator().manual_seed(seed))


def start_latent(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype) * SIGMA_MAX


def log_uniform_sigmas(steps: int) -> torch.Tensor:
    """Float64 schedule from 10 down to 0.05 (not ending in 0), uniform in log sigma."""
    return torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_END), steps + 1, dtype=torch.float64).exp()


def flow_error(name: str, steps: int) -> float:
    """Max error at sigma 0.05 after ``steps`` steps of the log-uniform schedule."""
    sigmas = log_uniform_sigmas(steps)
    x = start_latent()
    out = run_sampler(name, gaussian_denoiser, x, sigmas, noise_source(x))
    return (out - exact_flow(x, SIGMA_MAX, SIGMA_END)).abs().max().item()


def test_sampler_names_match_task_record() -> None:
    assert SAMPLER_NAMES == SAMPLERS
    assert len(SAMPLER_NAMES) == 24


def test_unknown_sampler_raises() -> None:
    x = start_latent()
    with pytest.raises(ValueError, match="dpmpp_2m_sde_gpu"):
        run_sampler("euler_magic", gaussian_denoiser, x, torch.tensor([1.0, 0.0]), noise_source(x))


# (sampler, steps for the three runs, minimum error ratio between the first and the last run)
# Step counts double twice, so order p gives a ratio near 4^p (lower-order start/end steps included).
CONVERGENCE = [
    ("euler", (10, 20, 40), 3.0),        # order 1
    ("ddim", (10, 20, 40), 3.0),         # = euler for txt2img
    ("heunpp2", (10, 20, 40), 3.0),      # weighted Heun: first order in the limit
    ("heun", (10, 20, 40), 12.0),        # order 2
    ("dpm_2", (10, 20, 40), 12.0),       # order 2
    ("dpmpp_2m", (10, 20, 40), 10.0),    # order 2
    ("lms", (10, 20, 40), 40.0),         # order 4 after a lower-order warm-up
    ("uni_pc", (10, 20, 40), 60.0),      # order 3 UniPC; the final predictor-only step is first order
    ("uni_pc_bh2", (10, 20, 40), 60.0),
    ("dpm_fast", (11, 23, 47), 60.0),    # order 3, final step order 2 when nfe % 3 == 2
]


@pytest.mark.parametrize(("name", "steps", "min_ratio"), CONVERGENCE)
def test_deterministic_samplers_converge_to_exact_ode_solution(
    name: str, steps: tuple[int, int, int], min_ratio: float
) -> None:
    errors = [flow_error(name, n) for n in steps]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] / errors[2] > min_ratio, errors
    assert errors[2] < 0.06, errors


def test_restart_without_restarts_is_heun_and_dpm_adaptive_meets_tolerance() -> None:
    assert flow_error("restart", 10) == flow_error("heun", 10)  # fewer than 20 steps: no restart blocks
    assert flow_error("dpm_adaptive", 10) < 0.1
    assert flow_error("dpm_adaptive", 10) == flow_error("dpm_adaptive", 40)  # only the end points matter


def test_dpmpp_2m_sde_follows_the_documented_update() -> None:
    """§2.7: x ← (σ'/σ)e^{−h}x + (1−e^{−2h})D, + ½(1−e^{−2h})(h/h_prev)(D − D_prev),
    + n·σ'·sqrt(1−e^{−2h}); into sigma 0 simply x ← D."""
    sampling = DiscreteSampling()
    sigmas = compute_sigmas(sampling, "karras", 6)
    x_start = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
    bounds = {"sigma_min": float(sigmas[-2]), "sigma_max": float(sigmas[0])}
    noise = noise_source(x_start, 7, **bounds)
    got = run_sampler("dpmpp_2m_sde_gpu", gaussian_denoiser, x_start, sigmas, noise)

    reference_noise = noise_source(x_start, 7, **bounds)
    x = x_start.double()
    previous, h_prev = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        denoised = gaussian_denoiser(x, torch.tensor([s], dtype=torch.float64))
        if s_next == 0:
            x = denoised
            break
        h = math.log(s / s_next)
        x = (s_next / s) * math.exp(-h) * x + (1 - math.exp(-2 * h)) * denoised
        if previous is not None and h_prev is not None:
            x = x + 0.5 * (1 - math.exp(-2 * h)) * (h / h_prev) * (denoised - previous)
        n = reference_noise.brownian(sigmas[i], sigmas[i + 1]).double()
        x = x + n * s_next * math.sqrt(1 - math.exp(-2 * h))
        previous, h_prev = denoised, h
    assert torch.allclose(got.double(), x, rtol=1e-5, atol=1e-5)


STOCHASTIC = [
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "tcd", "restart",
]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_seeded(name: str) -> None:
    sampling = DiscreteSampling()
    sigmas = compute_sigmas(sampling, "karras", 20 if name == "restart" else 5)  # 20: restart blocks run
    x = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
    bounds = {"sigma_min": float(sigmas[-2]), "sigma_max": float(sigmas[0])}

    def run(seed: int) -> torch.Tensor:
        return run_sampler(name, gaussian_denoiser, x, sigmas, noise_source(x, seed, **bounds),
                           model_sampling=sampling)

    first, again, other = run(3), run(3), run(4)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_all_sde_variants_share_the_same_noise() -> None:
    sigmas = compute_sigmas(DiscreteSampling(), "karras", 5)
    x = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
    bounds = {"sigma_min": float(sigmas[-2]), "sigma_max": float(sigmas[0])}
    for cpu_name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        outs = [run_sampler(n, gaussian_denoiser, x, sigmas, noise_source(x, 5, **bounds))
                for n in (cpu_name, cpu_name + "_gpu")]
        assert torch.equal(outs[0], outs[1])


def fake_denoiser(sampling: ModelSampling) -> Denoiser:
    """A deterministic stand-in for UNet + preconditioning that depends on input and timestep."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        unet_in = sampling.scale_input(x, sigma)
        t = sampling.timestep(sigma).view(-1, 1, 1, 1)
        return sampling.to_denoised(0.5 * unet_in + 1e-4 * t, x, sigma)

    return denoise


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_sampler_runs_on_every_scheduler(scheduler: str) -> None:
    sampling, actual = select_model_sampling(scheduler)
    steps = 3
    for name in SAMPLER_NAMES:
        sigmas = compute_sigmas(sampling, actual, steps, sampler=name)
        x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * sigmas[0]
        reports: list[StepInfo] = []
        noise = noise_source(x, 9, float(sigmas[sigmas > 0].min()), float(sigmas.max()))
        out = run_sampler(name, fake_denoiser(sampling), x, sigmas, noise, reports.append,
                          model_sampling=sampling)
        assert out.shape == x.shape and torch.isfinite(out).all(), (name, scheduler)
        indices = [r.index for r in reports]
        assert indices == list(range(len(reports))) and reports, (name, scheduler)
        if name != "dpm_adaptive":
            assert all(r.total == len(reports) for r in reports), (name, scheduler)
        if name not in ("dpm_fast", "dpm_adaptive", "restart"):
            assert len(reports) == len(sigmas) - 1, (name, scheduler)
        for r in reports:
            assert r.x.shape == x.shape and r.denoised.shape == x.shape and r.sigma.numel() == 1


def test_callback_sees_model_output_before_update() -> None:
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    x = start_latent() / SIGMA_MAX * 4.0
    seen: list[StepInfo] = []
    out = run_sampler("euler", gaussian_denoiser, x, sigmas, noise_source(x), seen.append)
    assert [r.sigma.item() for r in seen] == [4.0, 2.0, 1.0]
    assert torch.equal(seen[0].x, x)
    assert torch.equal(seen[0].denoised, gaussian_denoiser(x, torch.tensor([4.0], dtype=torch.float64)))
    assert torch.allclose(out, seen[-1].denoised, atol=1e-12)  # Euler into sigma 0 lands on the last x0


def test_uni_pc_and_restart_leave_caller_sigmas_untouched() -> None:
    sigmas = compute_sigmas(DiscreteSampling(), "karras", 21, sampler="uni_pc")
    before = sigmas.clone()
    x = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
    for name in ("uni_pc", "restart"):
        run_sampler(name, gaussian_denoiser, x, sigmas, noise_source(x))
        assert torch.equal(sigmas, before)


def test_restart_schedule_adds_restart_block_from_20_steps() -> None:
    sampling = DiscreteSampling()
    for steps, expected in ((19, 19), (20, 11 + 9), (36, 18 + 2 * 9)):
        sigmas = compute_sigmas(sampling, "karras", steps)
        x = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
        reports: list[StepInfo] = []
        run_sampler("restart", gaussian_denoiser, x, sigmas, noise_source(x), reports.append)
        assert len(reports) == expected, steps


def test_lms_coefficients_are_exact_integrals() -> None:
    t = np.array([10.0, 6.0, 3.5, 2.0, 1.0, 0.4])
    assert _lms_coefficient(1, t, 0, 0) == pytest.approx(-4.0)
    # second order: integral of the linear Lagrange basis over [t_i, t_{i+1}]
    a, b, c = t[1], t[2], t[0]
    expected_0 = ((b - c) ** 2 / 2 - (a - c) ** 2 / 2) / (a - c)
    assert _lms_coefficient(2, t, 1, 0) == pytest.approx(expected_0, rel=1e-12)
    # the Lagrange basis sums to one, so the coefficients sum to the step
    for order in (1, 2, 3, 4):
        i = order - 1 + 1
        total = sum(_lms_coefficient(order, t, i, j) for j in range(order))
        assert total == pytest.approx(t[i + 1] - t[i], rel=1e-12)


def test_ancestral_step_splits_variance() -> None:
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
    assert up.item() == pytest.approx(math.sqrt(1.0 * (4.0 - 1.0) / 4.0))
    assert down.item() ** 2 + up.item() ** 2 == pytest.approx(1.0)
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(0.0))
    assert down.item() == 0.0 and up.item() == 0.0


# ------------------------------------------------------------------------------------------- noise source


def test_brownian_is_reproducible_and_matches_fooocus_tree_construction() -> None:
    like = torch.zeros(1, 4, 8, 8)
    sigmas = karras_sigmas(6, 0.0291671585, 14.6146412)
    a = NoiseSource(like, seed=123, sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]),
                    generator=torch.Generator())
    b = NoiseSource(like, seed=123, sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]),
                    generator=torch.Generator())
    c = NoiseSource(like, seed=124, sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]),
                    generator=torch.Generator())
    tree = torchsde.BrownianTree(torch.as_tensor(float(sigmas[-2])), torch.zeros_like(like),
                                 torch.as_tensor(float(sigmas[0])), entropy=123)
    for i in range(4):
        s, s_next = sigmas[i], sigmas[i + 1]
        got = a.brownian(s, s_next)
        assert torch.equal(got, b.brownian(s, s_next))
        assert not torch.equal(got, c.brownian(s, s_next))
        expected = -tree(s_next, s) / (s_next - s).abs().sqrt()
        assert torch.equal(got, expected)


def test_brownian_increments_add_up_and_have_unit_variance() -> None:
    like = torch.zeros(1, 4, 64, 64)
    source = NoiseSource(like, seed=5, sigma_min=0.03, sigma_max=14.6, generator=torch.Generator())
    s0, s1, s2 = torch.tensor(9.0), torch.tensor(4.0), torch.tensor(1.5)
    w01 = source.brownian(s0, s1) * math.sqrt(5.0)
    w12 = source.brownian(s1, s2) * math.sqrt(2.5)
    w02 = source.brownian(s0, s2) * math.sqrt(7.5)
    assert torch.allclose(w01 + w12, w02, atol=1e-4)
    unit = source.brownian(s0, s1)
    assert abs(unit.mean().item()) < 0.03 and abs(unit.std().item() - 1.0) < 0.03
    # reversing the direction flips the sign
    assert torch.allclose(source.brownian(s1, s0), -unit, atol=1e-6)


def test_gaussian_continues_the_generator_stream() -> None:
    like = torch.zeros(1, 4, 5, 5)
    torch.manual_seed(77)
    initial = torch.randn(like.shape)
    expected_next = torch.randn_like(initial)  # Fooocus: randn_like from the global RNG after the noise

    generator = torch.Generator().manual_seed(77)
    assert torch.equal(torch.randn(like.shape, generator=generator), initial)
    source = NoiseSource(like, seed=77, sigma_min=0.1, sigma_max=1.0, generator=generator)
    assert torch.equal(source.gaussian(like), expected_next)


# ---------------------------------------------------------------------- exact single-step formulas


def test_uni_pc_matches_diffusers_unipc_on_the_same_sigmas() -> None:
    """An independent UniPC (diffusers, order 3, data prediction, lower-order final) agrees to rounding."""
    diffusers = pytest.importorskip("diffusers")
    for variant, name in (("bh1", "uni_pc"), ("bh2", "uni_pc_bh2")):
        for steps in (2, 4, 9):
            sigmas = log_uniform_sigmas(steps)
            x = start_latent()
            ours = run_sampler(name, gaussian_denoiser, x, sigmas, noise_source(x))

            scheduler = diffusers.UniPCMultistepScheduler(
                solver_order=3, prediction_type="epsilon", predict_x0=True, solver_type=variant,
                lower_order_final=True,
            )
            scheduler.set_timesteps(steps)
            scheduler.sigmas = sigmas.clone()
            scheduler.timesteps = torch.arange(steps)
            sample = x / math.sqrt(1 + SIGMA_MAX**2)
            for i in range(steps):
                sigma = sigmas[i]
                x_k = sample * torch.sqrt(1 + sigma**2)
                eps = (x_k - gaussian_denoiser(x_k, sigma.view(1))) / sigma
                sample = scheduler.step(eps, scheduler.timesteps[i], sample).prev_sample
            theirs = sample * math.sqrt(1 + SIGMA_END**2)
            assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12), (name, steps)
    assert not torch.equal(
        run_sampler("uni_pc", gaussian_denoiser, x, sigmas, noise_source(x)),
        run_sampler("uni_pc_bh2", gaussian_denoiser, x, sigmas, noise_source(x)),
    )


def first_gaussian(seed: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, dtype=like.dtype, generator=torch.Generator().manual_seed(seed))


def test_ddpm_step_is_the_ddpm_posterior() -> None:
    """x0-form posterior q(x_t' | x_t, x0): mean sqrt(ā')(1−α)/(1−ā)·x0 + sqrt(α)(1−ā')/(1−ā)·x_t."""
    sigma, sigma_next = 3.0, 1.2
    sigmas = torch.tensor([sigma, sigma_next], dtype=torch.float64)
    x = start_latent() / SIGMA_MAX * sigma
    got = run_sampler("ddpm", gaussian_denoiser, x, sigmas, noise_source(x, 21))
    a_bar, a_bar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    alpha = a_bar / a_bar_next
    x0 = gaussian_denoiser(x, sigmas[:1])
    x_vp = x * math.sqrt(a_bar)
    mean = (math.sqrt(a_bar_next) * (1 - alpha) / (1 - a_bar) * x0
            + math.sqrt(alpha) * (1 - a_bar_next) / (1 - a_bar) * x_vp)
    std = math.sqrt((1 - alpha) * (1 - a_bar_next) / (1 - a_bar))
    expected = (mean + std * first_gaussian(21, x)) / math.sqrt(a_bar_next)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_lcm_jumps_to_x0_and_renoises() -> None:
    sigmas = torch.tensor([5.0, 0.8, 0.0], dtype=torch.float64)
    x = start_latent() / SIGMA_MAX * 5.0
    got = run_sampler("lcm", gaussian_denoiser, x, sigmas, noise_source(x, 4))
    x1 = gaussian_denoiser(x, sigmas[:1]) + 0.8 * first_gaussian(4, x)
    assert torch.allclose(got, gaussian_denoiser(x1, sigmas[1:2]), rtol=1e-12, atol=1e-12)


def test_tcd_steps_to_the_gamma_intermediate_then_renoises() -> None:
    """TCD: x_s = x0 + σ_s·eps at s = floor(0.7·t_next), then fresh noise up to σ_next."""
    sampling, _ = select_model_sampling("tcd")
    sigmas = torch.cat([sampling.sigmas[[42, 17]].double(), torch.zeros(1, dtype=torch.float64)])
    x = start_latent() / SIGMA_MAX * sigmas[0]
    got = run_sampler("tcd", gaussian_denoiser, x, sigmas, noise_source(x, 8), model_sampling=sampling)
    table = DiscreteSampling().alphas_cumprod.double()
    t_next = 17 * 20 + 19
    sigma_s = math.sqrt(1 / table[math.floor(0.7 * t_next)].item() - 1)
    x0 = gaussian_denoiser(x, sigmas[:1])
    eps = (x - x0) / sigmas[0]
    x1 = x0 + sigma_s * eps + math.sqrt(sigmas[1].item() ** 2 - sigma_s**2) * first_gaussian(8, x)
    x0_1 = gaussian_denoiser(x1, sigmas[1:2])
    # Into sigma 0 the intermediate sits at timestep 0 and, as in the reference, stays in VP scaling:
    # sqrt(ā_0)·x0 + sqrt(1 − ā_0)·eps.
    a_0 = table[0].item()
    expected = math.sqrt(a_0) * x0_1 + math.sqrt(1 - a_0) * (x1 - x0_1) / sigmas[1]
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_heunpp2_weights() -> None:
    """Heun++: slopes at σ_i, σ_{i+1}, σ_{i+2} weighted 1−w2−w3, σ_{i+1}/(3σ_0), σ_{i+2}/(3σ_0);
    the second-to-last step uses Heun weights 1−σ_{i+1}/(2σ_0), σ_{i+1}/(2σ_0); the last is Euler."""
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    x = start_latent() / SIGMA_MAX * 8.0
    got = run_sampler("heunpp2", gaussian_denoiser, x, sigmas, noise_source(x))

    def slope(x_: torch.Tensor, s: float) -> torch.Tensor:
        return (x_ - gaussian_denoiser(x_, torch.tensor([s], dtype=torch.float64))) / s

    s = sigmas.tolist()
    expected = x
    for i in range(4):
        dt = s[i + 1] - s[i]
        d = slope(expected, s[i])
        if i == 3:
            expected = expected + d * dt
        elif i == 2:
            d2 = slope(expected + d * dt, s[i + 1])
            w2 = s[i + 1] / (2 * s[0])
            expected = expected + ((1 - w2) * d + w2 * d2) * dt
        else:
            x2 = expected + d * dt
            d2 = slope(x2, s[i + 1])
            d3 = slope(x2 + d2 * (s[i + 2] - s[i + 1]), s[i + 2])
            w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
            expected = expected + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_restart_jumps_back_up_to_sigma_2_after_reaching_0_1() -> None:
    sigmas = compute_sigmas(DiscreteSampling(), "karras", 20)
    x = start_latent(torch.float32) / SIGMA_MAX * sigmas[0]
    reports: list[StepInfo] = []
    run_sampler("restart", gaussian_denoiser, x, sigmas, noise_source(x), reports.append)
    evaluated = torch.stack([r.sigma for r in reports])
    base = karras_sigmas(11, sigmas[-2].item(), sigmas[0].item())
    low = int(torch.argmin((base - 0.1).abs()))
    high = int(torch.argmin((base - 2.0).abs()))
    block = karras_sigmas(10, base[low].item(), base[high].item())[:-1]
    expected = torch.cat([base[:low], block[:-1], base[low:-1]])
    assert torch.equal(evaluated, expected)
