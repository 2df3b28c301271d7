"""Speed of the metrics against the same computation written naively, and the metrics of trained runs.

    python benchmarks/metrics_speed.py [--images 10000] [--threads 2] [--runs runs/a runs/b ...] [--json out.json]

Part 1 times, on ``--images`` shapes of 32x32 (drawn first, not timed):
- feature extraction with the built-in shapes classifier: batches of 500 (what the metrics do)
  against one image at a time;
- FID from two feature sets: mean and covariance as matrix products and the trace term through
  two symmetric eigendecompositions, against a covariance summed sample by sample and the
  trace term from the eigenvalues of the product of the covariances (NumPy).
Both sides compute the same numbers; the script checks they agree.

Part 2 (``--runs``): FID, KID, precision/recall and density/coverage of each run's samples
(``--samples`` of them, its EMA network, its own sampler) against its dataset, in one table,
and the first run's dataset against itself (its next ``--samples`` items): the best score possible.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from aigc_kit.plugins.datasets.shapes import ShapesDataset
from aigc_kit.plugins.metrics import distances
from aigc_kit.plugins.metrics.features import load_extractor


def shapes(count: int, seed: int) -> torch.Tensor:
    dataset = ShapesDataset(32, 3, count, seed, backgrounds="black")
    return torch.stack([dataset[index] for index in range(count)])


def naive_fid(real: np.ndarray, fake: np.ndarray) -> float:
    def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = features.mean(0)
        covariance = np.zeros((features.shape[1], features.shape[1]))
        for row in features:  # one outer product per sample
            centred = row - mean
            covariance += np.outer(centred, centred)
        return mean, covariance / (features.shape[0] - 1)

    (mean_a, cov_a), (mean_b, cov_b) = statistics(real), statistics(fake)
    trace_of_root = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_of_root)


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def speed(count: int) -> dict:
    print(f"drawing {2 * count:,} shapes of 32x32 ...", flush=True)
    real_images, fake_images = shapes(count, 0), shapes(count, 1)
    extractor = load_extractor("shapes")
    extractor(real_images[:500])  # warm-up
    real, batched_seconds = timed(lambda: extractor(real_images, batch_size=500))
    fake = extractor(fake_images, batch_size=500)
    with torch.no_grad():
        single, single_seconds = timed(lambda: torch.cat([extractor(image[None], batch_size=1) for image in real_images]))
    assert torch.allclose(real, single, atol=1e-4), "batched and one-at-a-time features differ"
    fid, fid_seconds = timed(lambda: distances.fid(real, fake))
    naive, naive_seconds = timed(lambda: naive_fid(real.double().numpy(), fake.double().numpy()))
    # the eigenvalues of the (non-symmetric) product of two near-singular covariances carry
    # rounding the symmetric route avoids: the two agree to about 1e-5, relative
    assert abs(fid - naive) < 1e-4 * max(1.0, abs(fid)), (fid, naive)
    result = {
        "images": count, "threads": torch.get_num_threads(),
        "extraction_images_per_second": count / batched_seconds,
        "naive_extraction_images_per_second": count / single_seconds,
        "fid_seconds": fid_seconds, "naive_fid_seconds": naive_seconds, "fid": fid,
    }
    print(f"feature extraction: {result['extraction_images_per_second']:,.0f} images/s batched, "
          f"{result['naive_extraction_images_per_second']:,.0f} one at a time "
          f"({batched_seconds and single_seconds / batched_seconds:.1f}x)")
    print(f"FID of two {count:,}-image sets: {fid_seconds * 1e3:.1f} ms, naive {naive_seconds * 1e3:.1f} ms "
          f"({naive_seconds / fid_seconds:.1f}x); value {fid:.4f} both ways")
    total, naive_total = batched_seconds * 2 + fid_seconds, single_seconds * 2 + naive_seconds
    print(f"whole FID from images: {2 * count / total:,.0f} images/s, naive {2 * count / naive_total:,.0f} "
          f"images/s ({naive_total / total:.1f}x)")
    return result


def quality(runs: list[str], samples: int) -> list[dict]:
    from aigc_kit.core.evaluation import evaluate_run
    from aigc_kit.core.registry import default_registry

    registry = default_registry()
    requested = [(name, {"real_samples": samples}) for name in ("fid", "kid", "precision-recall", "density-coverage")]
    rows = []
    for run in runs:
        started = time.perf_counter()
        report = evaluate_run(run, registry, requested, samples)
        report["seconds"] = time.perf_counter() - started
        rows.append(report)
        values = report["values"]
        print(f"{run}: FID {values['fid/fid']:.3f}, KID {values['kid/kid']:.4f} +- {values['kid/kid_std']:.4f}, "
              f"precision {values['precision-recall/precision']:.3f}, recall {values['precision-recall/recall']:.3f}, "
              f"density {values['density-coverage/density']:.3f}, coverage {values['density-coverage/coverage']:.3f} "
              f"({report['seconds']:.0f} s)", flush=True)
    return rows


def real_baseline(run: str, samples: int) -> dict:
    """The metrics of the run's dataset against itself: its next ``samples`` items against the first ones.

    This is the best any generator can score with these sample counts (not 0 for FID: both sets are finite).
    """
    from aigc_kit.core.evaluation import build_metrics, evaluate
    from aigc_kit.core.registry import default_registry
    from aigc_kit.core.trained import load_trained

    registry = default_registry()
    data = load_trained(run, registry).components.data
    if len(data.dataset) < 2 * samples:
        raise SystemExit(f"{run}: its dataset has {len(data.dataset)} items, fewer than 2 x {samples}")
    requested = [(name, {"real_samples": samples}) for name in ("fid", "kid", "precision-recall", "density-coverage")]
    position = samples

    def draw(n: int) -> torch.Tensor:
        nonlocal position
        batch = torch.stack([data.dataset[index] for index in range(position, position + n)])
        position += n
        return batch

    values = evaluate(build_metrics(registry, requested, data), draw, samples)
    print(f"real data against itself: FID {values['fid/fid']:.3f}, KID {values['kid/kid']:.4f}, "
          f"precision {values['precision-recall/precision']:.3f}, recall {values['precision-recall/recall']:.3f}, "
          f"density {values['density-coverage/density']:.3f}, coverage {values['density-coverage/coverage']:.3f}")
    return {"source": f"{run} (its data, items {samples}-{2 * samples - 1})", "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    results = {"speed": speed(arguments.images)} if arguments.images else {}
    if arguments.runs:
        results["quality"] = quality(arguments.runs, arguments.samples)
        results["real_baseline"] = real_baseline(arguments.runs[0], arguments.samples)
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
