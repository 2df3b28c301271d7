"""The diffusion schedule and samplers against their equations, with denoisers that are exact by construction.

Two data distributions have closed-form ideal denoisers:
- a point mass at c: epsilon(x_t, t) = (x_t - sqrt(a_t) c) / sqrt(1 - a_t), and x_0 is always c;
- a Gaussian N(mu, s^2): E[epsilon | x_t] = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_kit.core.registry import Registry
from aigc_kit.core.timesteps import sampling_timesteps
from aigc_kit.plugins.diffusion.samplers import DDIMSampler, DDPMSampler
from aigc_kit.plugins.diffusion.schedule import (
    NoiseSchedule,
    ScheduleOptions,
    betas_for,
)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def schedule(**options) -> NoiseSchedule:
    return NoiseSchedule.from_options(ScheduleOptions(**options))


def ideal_prediction(schedule: NoiseSchedule, x_t, timesteps, x0, epsilon):
    """What a perfect denoiser of this schedule's prediction type outputs, given the true x_0 and epsilon."""
    a = schedule.alpha_bar(timesteps, x_t)
    if schedule.prediction_type == "epsilon":
        return epsilon
    if schedule.prediction_type == "sample":
        return x0
    return a.sqrt() * epsilon - (1 - a).sqrt() * x0


def point_mass_denoiser(schedule: NoiseSchedule, point: torch.Tensor):
    def denoise(x_t, timesteps):
        a = schedule.alpha_bar(timesteps, x_t)
        x0 = point.expand_as(x_t)
        epsilon = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return ideal_prediction(schedule, x_t, timesteps, x0, epsilon)

    return denoise


def gaussian_denoiser(schedule: NoiseSchedule, mean: float, std: float):
    def denoise(x_t, timesteps):
        a = schedule.alpha_bar(timesteps, x_t).double()
        epsilon = (1 - a).sqrt() * (x_t.double() - a.sqrt() * mean) / (a * std**2 + 1 - a)
        x0 = (x_t.double() - (1 - a).sqrt() * epsilon) / a.sqrt()
        return ideal_prediction(schedule, x_t.double(), timesteps, x0, epsilon).float()

    return denoise


# -- the schedule ------------------------------------------------------------------


def test_linear_betas_are_evenly_spaced_from_start_to_end_and_alphas_cumprod_is_their_running_product():
    betas = betas_for("linear", 1000, 1e-4, 0.02)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    alphas_cumprod = schedule(beta_schedule="linear").alphas_cumprod
    assert alphas_cumprod[500].item() == pytest.approx(math.prod(1 - b for b in betas[:501].tolist()), rel=1e-12)


def test_scaled_linear_betas_have_evenly_spaced_square_roots():
    betas = betas_for("scaled_linear", 50, 0.00085, 0.012)
    roots = betas.sqrt()
    assert roots[0].item() == pytest.approx(0.00085**0.5) and roots[-1].item() == pytest.approx(0.012**0.5)
    assert torch.allclose(roots.diff(), roots.diff()[0].expand(49))


def test_cosine_alphas_cumprod_follow_the_squared_cosine_until_the_beta_cap():
    steps = 1000
    alphas_cumprod = schedule(beta_schedule="cosine", num_train_timesteps=steps).alphas_cumprod

    def f(s):
        return math.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900, 990):
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas_for("cosine", steps).max().item() == pytest.approx(0.999)


def test_betas_recovered_from_alphas_cumprod_match_the_schedule():
    for name in ("linear", "scaled_linear", "cosine"):
        assert torch.allclose(schedule(beta_schedule=name).betas, betas_for(name, 1000), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    alpha_bar=st.floats(1e-4, 1 - 1e-4),
    prediction_type=st.sampled_from(PREDICTION_TYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_each_prediction_type_converts_back_to_the_x0_and_epsilon_that_made_it(alpha_bar, prediction_type, seed):
    noise_schedule = NoiseSchedule(torch.tensor([alpha_bar], dtype=torch.float64), prediction_type)
    generator = torch.Generator().manual_seed(seed)
    x0, epsilon = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64).unbind(0)
    t = torch.zeros(3, dtype=torch.long)
    x_t = noise_schedule.add_noise(x0, epsilon, t)
    assert torch.allclose(x_t, alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * epsilon)
    target = noise_schedule.target(x0, epsilon, t)
    recovered_x0, recovered_epsilon = noise_schedule.to_x0_and_epsilon(target, x_t, t)
    assert torch.allclose(recovered_x0, x0, atol=1e-6 / alpha_bar**0.5)
    assert torch.allclose(recovered_epsilon, epsilon, atol=1e-6 / (1 - alpha_bar) ** 0.5)


# -- timestep sequences ---------------------------------------------------------------


def test_timestep_spacings_for_ten_of_a_thousand_steps():
    assert sampling_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert sampling_timesteps(1000, 10, "leading", offset=1) == list(range(901, 0, -100))
    assert sampling_timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    assert sampling_timesteps(1000, 10, "linspace") == list(range(999, -1, -111))


def test_trailing_spacing_that_does_not_divide_evenly_rounds_each_timestep():
    assert sampling_timesteps(1000, 3, "trailing") == [999, 666, 332]


@settings(max_examples=80, deadline=None)
@given(total=st.integers(2, 2000), data=st.data(), spacing=st.sampled_from(["leading", "trailing", "linspace"]))
def test_every_spacing_gives_the_asked_number_of_distinct_decreasing_timesteps(total, data, spacing):
    steps = data.draw(st.integers(1, total))
    timesteps = sampling_timesteps(total, steps, spacing)
    assert len(timesteps) == steps
    assert all(a > b for a, b in itertools.pairwise(timesteps))
    assert timesteps[-1] >= 0 and timesteps[0] < total


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_steps_to_the_previous_timestep_of_its_own_sequence(spacing, monkeypatch):
    sampler = DDIMSampler(schedule(), steps=3, timestep_spacing=spacing)
    pairs = []
    original = sampler.step
    monkeypatch.setattr(sampler, "step", lambda x0, eps, t, p, x, noise=None: pairs.append((t, p)) or original(
        x0, eps, t, p, x, noise))
    sampler.sample(lambda x, t: torch.zeros_like(x), torch.randn(2, 1))
    sequence = sampling_timesteps(1000, 3, spacing)
    assert pairs == list(zip(sequence, [*sequence[1:], -1], strict=True))


# -- single steps keep the forward process's marginals ----------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("timestep, previous", [(999, 666), (500, 499), (100, -1), (700, 20)])
def test_a_ddim_step_from_exact_predictions_keeps_q_of_x_previous_given_x0(eta, timestep, previous):
    """DDIM's non-Markovian process keeps q(x_p | x_0) = N(sqrt(a_p) x_0, 1 - a_p) for every eta (Song et al. eq. 7)."""
    noise_schedule = schedule()
    sampler = DDIMSampler(noise_schedule, steps=10, eta=eta)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.8, dtype=torch.float64)
    epsilon = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_t = noise_schedule.add_noise(x0, epsilon, torch.full((len(x0),), timestep))
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_previous = sampler.step(x0, epsilon, timestep, previous, x_t, noise=z)
    a_previous = noise_schedule.alpha_bar(previous, x0).item()
    assert x_previous.mean().item() == pytest.approx(a_previous**0.5 * 0.8, abs=0.006)
    assert x_previous.var().item() == pytest.approx(1 - a_previous, rel=0.015, abs=1e-9)


@pytest.mark.parametrize("timestep, previous", [(999, 666), (500, 499), (700, 20), (10, -1)])
def test_a_ddpm_posterior_step_keeps_q_of_x_previous_given_x0(timestep, previous):
    """Sampling x_p ~ q(x_p | x_t, x_0) from x_t ~ q(x_t | x_0) gives q(x_p | x_0), also for strided pairs."""
    noise_schedule = schedule(beta_schedule="cosine")
    sampler = DDPMSampler(noise_schedule, steps=10)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1), -0.5, dtype=torch.float64)
    x_t = noise_schedule.add_noise(x0, torch.randn(x0.shape, generator=generator, dtype=torch.float64),
                                   torch.full((len(x0),), timestep))
    mean, variance = sampler.posterior(x0, x_t, timestep, previous)
    x_previous = mean + variance.sqrt() * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    a_previous = noise_schedule.alpha_bar(previous, x0).item()
    assert x_previous.mean().item() == pytest.approx(a_previous**0.5 * -0.5, abs=0.006)
    assert x_previous.var().item() == pytest.approx(1 - a_previous, rel=0.015, abs=1e-9)


# -- whole sampling runs ---------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_eta_zero_lands_on_the_point_of_a_point_mass(prediction_type, spacing):
    noise_schedule = schedule(prediction_type=prediction_type, beta_schedule="scaled_linear")
    point = torch.tensor([0.3, -0.9, 0.5]).reshape(1, 3, 1, 1)
    sampler = DDIMSampler(noise_schedule, steps=7, eta=0.0, timestep_spacing=spacing)
    samples = sampler.sample(point_mass_denoiser(noise_schedule, point), torch.randn(16, 3, 2, 2))
    assert torch.allclose(samples, point.expand(16, 3, 2, 2), atol=1e-4)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_strided_and_full_land_on_the_point_of_a_point_mass(prediction_type):
    noise_schedule = schedule(prediction_type=prediction_type)
    point = torch.tensor([0.25, -0.75]).reshape(1, 2)
    for steps in (None, 25):
        samples = DDPMSampler(noise_schedule, steps=steps).sample(point_mass_denoiser(noise_schedule, point),
                                                                  torch.randn(8, 2))
        assert torch.allclose(samples, point.expand(8, 2), atol=1e-4)


def test_ddim_eta_zero_is_deterministic_and_ignores_the_generator():
    noise_schedule = schedule()
    sampler = DDIMSampler(noise_schedule, steps=10, eta=0.0)
    denoiser = gaussian_denoiser(noise_schedule, 0.5, 0.3)
    noise = torch.randn(64, 2)
    first = sampler.sample(denoiser, noise, generator=torch.Generator().manual_seed(1))
    second = sampler.sample(denoiser, noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    assert torch.equal(first, sampler.sample(denoiser, noise))


def test_ddim_with_eta_draws_step_noise_from_the_generator_or_takes_it_as_an_input():
    noise_schedule = schedule()
    sampler = DDIMSampler(noise_schedule, steps=5, eta=1.0)
    denoiser = gaussian_denoiser(noise_schedule, 0.5, 0.3)
    noise = torch.randn(64, 2)
    one = sampler.sample(denoiser, noise, generator=torch.Generator().manual_seed(1))
    again = sampler.sample(denoiser, noise, generator=torch.Generator().manual_seed(1))
    other = sampler.sample(denoiser, noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(one, again) and not torch.allclose(one, other)
    step_noise = torch.stack([torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) for _ in range(5)])
    given = sampler.sample(denoiser, noise, step_noise=step_noise)
    assert torch.equal(given, sampler.sample(denoiser, noise, step_noise=step_noise))
    assert not torch.allclose(given, one)


def test_ddim_with_eta_one_and_ddpm_on_the_same_subset_are_the_same_process():
    noise_schedule = schedule()
    denoiser = gaussian_denoiser(noise_schedule, 0.5, 0.3)
    noise = torch.randn(32, 3)
    ddim = DDIMSampler(noise_schedule, steps=20, eta=1.0).sample(denoiser, noise, generator=torch.Generator().manual_seed(4))
    ddpm = DDPMSampler(noise_schedule, steps=20).sample(denoiser, noise, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ddim, ddpm, atol=1e-4)


@pytest.mark.parametrize("make_sampler", [
    lambda s: DDIMSampler(s, steps=1000, eta=0.0, clip_sample=False),
    lambda s: DDIMSampler(s, steps=250, eta=1.0, clip_sample=False),
    lambda s: DDPMSampler(s, clip_sample=False),
], ids=["ddim-eta0-1000", "ddim-eta1-250", "ddpm-1000"])
def test_samplers_with_the_ideal_denoiser_reproduce_a_gaussian_data_distribution(make_sampler):
    noise_schedule = schedule(prediction_type="v_prediction")
    mean, std = 0.7, 0.5
    samples = make_sampler(noise_schedule).sample(gaussian_denoiser(noise_schedule, mean, std),
                                                  torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0)),
                                                  generator=torch.Generator().manual_seed(1))
    assert samples.mean().item() == pytest.approx(mean, abs=0.015)
    assert samples.std().item() == pytest.approx(std, rel=0.03)


def test_ddim_inversion_round_trip_error_falls_with_more_steps():
    """DDIM paper, Table 2: encoding a sample to x_T and decoding it again is more exact with more steps."""
    noise_schedule = schedule()
    denoiser = gaussian_denoiser(noise_schedule, 0.7, 0.5)
    images = 0.7 + 0.5 * torch.randn(500, 8, generator=torch.Generator().manual_seed(3))
    errors = []
    for steps in (5, 10, 20, 50):
        sampler = DDIMSampler(noise_schedule, steps=steps, clip_sample=False)
        encoded = sampler.invert(denoiser, images)
        errors.append((sampler.sample(denoiser, encoded) - images).pow(2).mean().sqrt().item())
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.2 * errors[0], errors
    encoded = DDIMSampler(noise_schedule, steps=50, clip_sample=False).invert(denoiser, images)
    assert encoded.std().item() == pytest.approx(1.0, abs=0.05)  # the encoding looks like the prior's noise


@pytest.mark.parametrize("make_sampler", [lambda s, clip: DDIMSampler(s, 10, clip_sample=clip, clip_sample_range=0.5),
                                          lambda s, clip: DDPMSampler(s, 10, clip_sample=clip, clip_sample_range=0.5)],
                         ids=["ddim", "ddpm"])
def test_clipping_bounds_the_predicted_x0_and_so_the_final_sample(make_sampler):
    noise_schedule = schedule()
    far_point = torch.full((1, 2), 3.0)
    denoiser = point_mass_denoiser(noise_schedule, far_point)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(make_sampler(noise_schedule, False).sample(denoiser, noise), far_point.expand(8, 2), atol=1e-3)
    clipped = make_sampler(noise_schedule, True).sample(denoiser, noise, generator=torch.Generator().manual_seed(1))
    assert clipped.abs().max().item() <= 0.5 + 1e-6


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_clipping_recomputes_epsilon_so_the_pair_still_reconstructs_x_t(prediction_type):
    noise_schedule = schedule(prediction_type=prediction_type)
    sampler = DDIMSampler(noise_schedule, 10, clip_sample=True, clip_sample_range=1.0)
    x_t = 3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    x0, epsilon = sampler.predict(lambda x, t: 2 * x, x_t, 700)  # a denoiser whose x_0 often leaves [-1, 1]
    assert x0.abs().max() <= 1.0 and (x0.abs() == 1.0).any()
    a = noise_schedule.alpha_bar(700, x_t)
    assert torch.allclose(a.sqrt() * x0 + (1 - a).sqrt() * epsilon, x_t, atol=1e-5)


def test_samplers_are_created_standalone_from_the_registry(builtin_registry: Registry):
    sampler = builtin_registry.create("sampler", "ddim", steps=12, eta=0.0, beta_schedule="cosine",
                                      num_train_timesteps=500, prediction_type="sample")
    assert sampler.timesteps == sampling_timesteps(500, 12, "trailing")
    assert sampler.schedule.prediction_type == "sample"
    point = torch.tensor([0.1, 0.2]).reshape(1, 2)
    samples = sampler.sample(point_mass_denoiser(sampler.schedule, point), sampler.noise(4, (2,)))
    assert samples.shape == (4, 2) and torch.allclose(samples, point.expand(4, 2), atol=1e-4)
    ddpm = builtin_registry.create("sampler", "ddpm", steps=50, num_train_timesteps=500)
    assert len(ddpm.timesteps) == 50
