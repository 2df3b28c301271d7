"""The metrics' numerics: Fréchet distance against closed forms, KID's unbiasedness, k-NN precision/recall and coverage."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_kit.plugins.metrics import distances


def gaussian(count: int, mean: torch.Tensor, covariance: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    root = torch.linalg.cholesky(covariance)
    return mean + torch.randn(count, mean.shape[0], generator=generator, dtype=torch.float64) @ root.T


def random_covariance(dimension: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dimension, dimension, generator=generator, dtype=torch.float64)
    return factor @ factor.T / dimension + 0.1 * torch.eye(dimension, dtype=torch.float64)


def test_the_frechet_distance_of_two_samples_of_one_gaussian_goes_to_zero_as_they_grow():
    mean, covariance = torch.full((6,), 0.5, dtype=torch.float64), random_covariance(6, 0)
    distances_by_size = [distances.fid(gaussian(size, mean, covariance, 1), gaussian(size, mean, covariance, 2))
                         for size in (200, 2000, 20000)]
    # the estimate's bias and spread fall as 1/size: each tenfold step cuts it several times over
    assert distances_by_size[0] > 3 * distances_by_size[1] > 9 * distances_by_size[2]
    assert distances_by_size[2] < 0.01


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=6), st.data())
def test_the_frechet_distance_of_diagonal_gaussians_is_the_closed_form(means, data):
    dimension = len(means)
    mean_a = torch.tensor(means, dtype=torch.float64)
    mean_b = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=dimension, max_size=dimension)),
                          dtype=torch.float64)
    std_a = torch.tensor(data.draw(st.lists(st.floats(0.01, 3), min_size=dimension, max_size=dimension)),
                         dtype=torch.float64)
    std_b = torch.tensor(data.draw(st.lists(st.floats(0.01, 3), min_size=dimension, max_size=dimension)),
                         dtype=torch.float64)
    expected = float((mean_a - mean_b).square().sum() + (std_a - std_b).square().sum())
    actual = distances.frechet_distance(mean_a, torch.diag(std_a**2), mean_b, torch.diag(std_b**2))
    assert actual == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_frechet_distance_of_full_covariances_matches_the_eigenvalues_of_their_product(seed):
    covariance_a, covariance_b = random_covariance(5, seed), random_covariance(5, seed + 10)
    mean_a, mean_b = torch.zeros(5, dtype=torch.float64), torch.linspace(-1, 1, 5, dtype=torch.float64)
    # tr((A^1/2 B A^1/2)^1/2) is the sum of the square roots of the eigenvalues of AB (similar matrices)
    trace_of_root = torch.linalg.eigvals(covariance_a @ covariance_b).real.clamp_min(0).sqrt().sum()
    expected = float((mean_a - mean_b).square().sum() + covariance_a.trace() + covariance_b.trace() - 2 * trace_of_root)
    assert distances.frechet_distance(mean_a, covariance_a, mean_b, covariance_b) == pytest.approx(expected, rel=1e-9)
    assert distances.frechet_distance(mean_a, covariance_a, mean_a, covariance_a) == pytest.approx(0, abs=1e-9)


def test_the_polynomial_mmd_matches_its_definition_on_a_small_example():
    real = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5, 0.5], [2.0, 0.0]], dtype=torch.float64)

    def kernel(x, y):
        return (float(x @ y) / 2 + 1) ** 3

    within_real = sum(kernel(real[i], real[j]) for i in range(3) for j in range(3) if i != j) / 6
    within_fake = sum(kernel(fake[i], fake[j]) for i in range(2) for j in range(2) if i != j) / 2
    across = sum(kernel(r, f) for r in real for f in fake) / 6
    assert distances.polynomial_mmd2(real, fake) == pytest.approx(within_real + within_fake - 2 * across)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 12), st.floats(0.2, 3.0), st.integers(0, 10_000))
def test_kid_is_unbiased_for_two_samples_of_one_distribution(dimension, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.tensor([
        distances.polynomial_mmd2(scale * torch.randn(10, dimension, generator=generator, dtype=torch.float64),
                                  scale * torch.randn(10, dimension, generator=generator, dtype=torch.float64))
        for _ in range(400)])
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    # the mean of an unbiased estimate is 0 within a few standard errors; the biased (V-statistic)
    # estimate, which keeps the kernel's diagonal, sits well above 0 at ten samples per set
    assert abs(float(estimates.mean())) < 4 * standard_error
    biased = [float(((x @ x.T / dimension + 1) ** 3).mean() + ((y @ y.T / dimension + 1) ** 3).mean()
                    - 2 * ((x @ y.T / dimension + 1) ** 3).mean())
              for x, y in [(scale * torch.randn(10, dimension, generator=generator, dtype=torch.float64),
                            scale * torch.randn(10, dimension, generator=generator, dtype=torch.float64))
                           for _ in range(400)]]
    assert sum(biased) / len(biased) > 4 * standard_error


def test_kid_tells_different_distributions_apart():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(600, 8, generator=generator)
    same, shifted = torch.randn(600, 8, generator=generator), torch.randn(600, 8, generator=generator) + 0.5
    kid_same, _ = distances.kid(real, same, subsets=20, subset_size=300)
    kid_shifted, spread = distances.kid(real, shifted, subsets=20, subset_size=300)
    assert abs(kid_same) < spread and kid_shifted > 10 * spread


def clusters(centres: list[tuple[float, float]], per_cluster: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor(centre) + 0.1 * torch.randn(per_cluster, 2, generator=generator)
                      for centre in centres])


def test_precision_and_recall_see_fidelity_and_dropped_modes():
    modes = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)]
    real = clusters(modes, 250, 0)
    assert distances.precision_recall(real, clusters(modes, 250, 1)) >= (0.95, 0.95)
    precision, recall = distances.precision_recall(real, clusters(modes[:2], 500, 1))  # half the modes dropped
    assert precision > 0.95 and recall == pytest.approx(0.5, abs=0.03)
    precision, recall = distances.precision_recall(real, clusters([(5.0, 5.0)], 1000, 1))  # off the manifold
    assert precision == 0.0 and recall == 0.0


def test_density_and_coverage_on_a_hand_computed_example():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # with k = 1 the balls' radii are 1, 1, 1 and 8 (each point's nearest other point)
    fake = torch.tensor([[0.5], [0.5], [20.0]])
    density, coverage = distances.density_coverage(real, fake, k=1)
    # 0.5 lies in the balls of 0 and 1 (twice, two fakes): 4 of k x 3 = 3; 20 lies in none
    assert density == pytest.approx(4 / 3)
    # the balls of 0 and 1 hold a fake; those of 2 (nearest fake 1.5 > 1) and 10 (nearest 9.5 > 8) do not
    assert coverage == pytest.approx(0.5)


def test_matching_sets_have_density_and_coverage_near_one():
    real, fake = clusters([(0.0, 0.0), (5.0, 5.0)], 500, 0), clusters([(0.0, 0.0), (5.0, 5.0)], 500, 1)
    density, coverage = distances.density_coverage(real, fake)
    assert 0.85 < density < 1.15 and coverage > 0.95
    _, coverage_one_mode = distances.density_coverage(real, clusters([(0.0, 0.0)], 1000, 1))
    assert coverage_one_mode == pytest.approx(0.5, abs=0.03)


def test_blocks_give_the_same_answer_as_one_matrix(monkeypatch):
    real, fake = clusters([(0.0, 0.0), (3.0, 0.0)], 300, 0), clusters([(0.0, 0.0)], 400, 1)
    whole = (distances.precision_recall(real, fake), distances.density_coverage(real, fake))
    monkeypatch.setattr(distances, "BLOCK", 37)
    assert (distances.precision_recall(real, fake), distances.density_coverage(real, fake)) == whole
