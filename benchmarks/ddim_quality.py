"""DDIM against DDPM on one trained UNet: sample quality against network evaluations.

Trains ``examples/ddim-shapes.yaml`` (or reuses a finished run with ``--run``),
then samples the same noise with DDIM (eta 0) at 10, 20, 50 and 1000 steps,
DDPM at 1000 steps and DDPM strided to 50 steps (with either variance), and scores each against real
images by a Fréchet distance in the features of a fixed, randomly initialised
convolutional network (a stand-in for FID until trained feature extractors
exist: it ranks sample sets by how far their feature statistics are from the
data's, with no download). The score of two disjoint sets of real images is
printed as the floor. Also measures the DDIM inversion round trip on real
images (the DDIM paper's Table 2).

    python benchmarks/ddim_quality.py [--run runs/ddim-shapes] [--samples 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddim-shapes.yaml"
SAMPLERS = [  # (label, sampler name, options)
    ("DDIM 10", "ddim", {"steps": 10, "eta": 0.0}),
    ("DDIM 20", "ddim", {"steps": 20, "eta": 0.0}),
    ("DDIM 50", "ddim", {"steps": 50, "eta": 0.0}),
    ("DDIM 1000", "ddim", {"steps": 1000, "eta": 0.0}),
    ("DDPM 1000", "ddpm", {}),
    ("DDPM 50, posterior variance", "ddpm", {"steps": 50}),
    ("DDPM 50, beta variance", "ddpm", {"steps": 50, "variance_type": "fixed_large"}),
    # The paper's own sequence starts at t = 0 going up in strides (leading): its last step lands from t = 0,
    # where the denoiser removes almost nothing, so any noise the step before left in stays in the image.
    ("DDIM 50, leading", "ddim", {"steps": 50, "eta": 0.0, "timestep_spacing": "leading"}),
    ("DDPM 50, beta variance, leading", "ddpm", {"steps": 50, "variance_type": "fixed_large",
                                                 "timestep_spacing": "leading"}),
]
# CIFAR-10 FID from the DDIM paper's Table 1 (DDPM 1000: the DDPM paper). Strided DDPM with the posterior
# variance is the same process as DDIM with eta 1 (its row); with beta as the variance it is the paper's sigma-hat row.
PUBLISHED = {
    "DDIM 10": 13.36, "DDIM 20": 6.84, "DDIM 50": 4.67, "DDIM 1000": 4.04, "DDPM 1000": 3.17,
    "DDPM 50, posterior variance": 8.01, "DDPM 50, beta variance": 32.72,
    "DDIM 50, leading": 4.67, "DDPM 50, beta variance, leading": 32.72,
}


class RandomFeatures(torch.nn.Module):
    """A fixed random convolutional network: three conv-ReLU stages, pooled to 2x2, 192 features."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers = []
        for cin, cout, stride in ((channels, 32, 1), (32, 48, 2), (48, 48, 2)):
            conv = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, torch.nn.ReLU()]
        self.layers = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between two feature sets (rows are samples)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def training_step_seconds(trained, precision: str, batch_size: int, steps: int = 12) -> float:
    """Seconds per training step (forward, backward, Adam) of a copy of the run's denoiser, under autocast or not."""
    import copy

    from aigc_kit.core.device import autocast
    from aigc_kit.core.plugin_api import ModelBundle

    denoiser = copy.deepcopy(trained.network).train()
    loss = trained.components.loss
    bundle = ModelBundle({"denoiser": denoiser}, "denoiser", trained.components.model.noise_shape)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    data = trained.components.data.dataset
    batch = torch.stack([data[i] for i in range(batch_size)])
    for index in range(steps + 2):
        if index == 2:
            started = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            value, _ = loss.compute(loss.phases[0], batch, bundle, index)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def train(config_path: Path, output: Path, steps: int) -> Path:
    from aigc_kit.core.registry import Registry
    from aigc_kit.core.run import run

    started = time.perf_counter()
    run(config_path, Registry(builtin_only=True), output=output,
        overrides=["train.progress=false", "output.overwrite=true", f"train.steps={steps}"])
    print(f"trained {config_path.name} in {time.perf_counter() - started:.0f} s -> {output}")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run directory to reuse (default: train the example)")
    parser.add_argument("--config", type=Path, default=EXAMPLE, help="the config to train when --run is not given")
    parser.add_argument("--output", type=Path, default=Path("runs/ddim-quality"), help="where to train")
    parser.add_argument("--steps", type=int, default=12000,
                        help="training steps when --run is not given (the example's 4,000 are not enough: docs/benchmarks.md)")
    parser.add_argument("--samples", type=int, default=500, help="samples per sampler")
    parser.add_argument("--real", type=int, default=2000, help="real images for the reference statistics")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from aigc_kit.core.registry import Registry
    from aigc_kit.core.trained import load_trained

    run_dir = args.run or train(args.config, args.output, args.steps)
    registry = Registry(builtin_only=True)
    trained = load_trained(run_dir, registry)
    denoiser, data = trained.network, trained.components.data
    shape = tuple(trained.components.model.noise_shape)
    schedule = {key: trained.loaded.options["loss"].model_dump()[key]
                for key in ("beta_schedule", "num_train_timesteps", "beta_start", "beta_end", "prediction_type")}
    features = RandomFeatures(shape[0])

    def real_images(start: int, count: int) -> torch.Tensor:
        return torch.stack([data.dataset[(start + i) % len(data.dataset)] for i in range(count)])

    def featurise(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([features(batch) for batch in images.split(args.batch)])

    real = featurise(real_images(0, args.real))
    floor = frechet_distance(featurise(real_images(args.real, args.samples)), real)
    noise = torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(1234))
    rows = []
    for label, name, options in SAMPLERS:
        sampler = registry.create("sampler", name, **schedule, **options)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(99)
        samples = torch.cat([sampler.sample(denoiser, batch, generator=generator) for batch in noise.split(args.batch)])
        seconds = time.perf_counter() - started
        score = frechet_distance(featurise(samples.clamp(-1, 1)), real)
        rows.append({"sampler": label, "evaluations": len(sampler.timesteps), "score": score, "seconds": seconds})
        print(f"{label:<20} {len(sampler.timesteps):>5} evaluations  score {score:8.3f}  {seconds:7.1f} s", flush=True)

    batch_size = trained.loaded.config.train.batch_size
    speed = {precision: training_step_seconds(trained, precision, batch_size) for precision in ("fp32", "bf16")}

    best_long = min(row["score"] for row in rows if row["evaluations"] == 1000)
    inversion = []
    images = real_images(10_000, 100)
    for steps in (10, 20, 50, 100):
        sampler = registry.create("sampler", "ddim", **schedule, steps=steps, eta=0.0)
        encoded = sampler.invert(denoiser, images)
        error = (sampler.sample(denoiser, encoded) - images).square().mean().sqrt().item()
        inversion.append({"steps": steps, "rmse": error, "encoded_std": encoded.std().item()})

    print(f"\nrun: {trained.checkpoint}   samples per sampler: {args.samples}   real reference: {args.real}")
    print(f"floor (real vs real, {args.samples} images): {floor:.3f}\n")
    print("| sampler | network evaluations | score (random-feature FD) | / best 1000-step | seconds | CIFAR-10 FID (paper) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['sampler']} | {row['evaluations']} | {row['score']:.3f} | {row['score'] / best_long:.2f} "
              f"| {row['seconds']:.0f} | {PUBLISHED[row['sampler']]} |")
    print("\n| DDIM inversion steps | round-trip RMSE | std of the encoding |")
    print("|---:|---:|---:|")
    for row in inversion:
        print(f"| {row['steps']} | {row['rmse']:.4f} | {row['encoded_std']:.3f} |")
    print(f"\ntraining step, batch {batch_size}: fp32 {speed['fp32']:.3f} s, bf16 autocast {speed['bf16']:.3f} s "
          f"({speed['fp32'] / speed['bf16']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps({"floor": floor, "samplers": rows, "inversion": inversion, "training_step_seconds": speed,
                                         "config": yaml.safe_load((Path(trained.checkpoint) / "config.yaml").read_text())},
                                        indent=2))


if __name__ == "__main__":
    main()
