"""Distances between two sets of features, in float64: Fréchet, kernel (KID), k-NN precision/recall, density/coverage.

Each takes ``real`` (N, D) and ``fake`` (M, D) tensors. The k-nearest-neighbour
estimates work through the distance matrix in blocks, so 10,000 x 10,000
features need tens of megabytes, not gigabytes.
"""

from __future__ import annotations

import torch

BLOCK = 2048


def mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample mean and the unbiased sample covariance (divided by N - 1)."""
    features = features.double()
    mean = features.mean(0)
    centred = features - mean
    return mean, centred.T @ centred / (features.shape[0] - 1)


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """The Fréchet distance of N(mean_a, cov_a) and N(mean_b, cov_b).

    ``|mean_a - mean_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a^1/2 cov_b cov_a^1/2)^1/2)``;
    the trace term through two symmetric eigendecompositions, which (unlike a general
    matrix square root) stays real and exact for positive semi-definite covariances.
    """
    values, vectors = torch.linalg.eigh(cov_a.double())
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b.double() @ root_a
    trace_of_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    difference = (mean_a.double() - mean_b.double()).square().sum()
    return float(difference + cov_a.double().trace() + cov_b.double().trace() - 2 * trace_of_root)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance of Gaussians fitted to the two feature sets (Heusel et al. 2017)."""
    return frechet_distance(*mean_and_covariance(real), *mean_and_covariance(fake))


def polynomial_mmd2(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The unbiased estimate of MMD^2 with the kernel (x.y / D + 1)^3 (Binkowski et al. 2018, KID)."""
    real, fake = real.double(), fake.double()
    dimension = real.shape[1]
    m, n = real.shape[0], fake.shape[0]
    k_real = (real @ real.T / dimension + 1) ** 3
    k_fake = (fake @ fake.T / dimension + 1) ** 3
    k_cross = (real @ fake.T / dimension + 1) ** 3
    within_real = (k_real.sum() - k_real.diagonal().sum()) / (m * (m - 1))
    within_fake = (k_fake.sum() - k_fake.diagonal().sum()) / (n * (n - 1))
    return float(within_real + within_fake - 2 * k_cross.mean())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID: the mean and standard deviation of :func:`polynomial_mmd2` over random subsets of both sets."""
    size = min(subset_size, real.shape[0], fake.shape[0])
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.tensor([
        polynomial_mmd2(real[torch.randperm(real.shape[0], generator=generator)[:size]],
                        fake[torch.randperm(fake.shape[0], generator=generator)[:size]])
        for _ in range(subsets)])
    return float(estimates.mean()), float(estimates.std()) if subsets > 1 else 0.0


def kth_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point of the same set."""
    features = features.double()
    radii = []
    for start in range(0, features.shape[0], BLOCK):
        distances = torch.cdist(features[start:start + BLOCK], features)
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0: the point itself
    return torch.cat(radii)


def _inside_counts(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point, how many of the balls B(centre_i, radius_i) contain it."""
    points, centres = points.double(), centres.double()
    counts = []
    for start in range(0, points.shape[0], BLOCK):
        distances = torch.cdist(points[start:start + BLOCK], centres)
        counts.append((distances <= radii).sum(1))
    return torch.cat(counts)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of k-NN balls.

    Precision: the share of fakes inside the real manifold; recall: the share of reals inside the fake one.
    """
    precision = (_inside_counts(fake, real, kth_neighbour_radii(real, k)) > 0).double().mean()
    recall = (_inside_counts(real, fake, kth_neighbour_radii(fake, k)) > 0).double().mean()
    return float(precision), float(recall)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), with k-NN balls around the real points only.

    Density: how many real balls contain each fake, over k (about 1 when the two match; it
    rewards fakes in dense real regions). Coverage: the share of real balls that hold at least one fake.
    """
    real, fake = real.double(), fake.double()
    radii = kth_neighbour_radii(real, k)
    density = _inside_counts(fake, real, radii).double().sum() / (k * fake.shape[0])
    nearest_fake = torch.cat([torch.cdist(real[start:start + BLOCK], fake).min(1).values
                              for start in range(0, real.shape[0], BLOCK)])
    coverage = (nearest_fake <= radii).double().mean()
    return float(density), float(coverage)
