"""Conditional generation on labelled shapes: does a model draw the class it is asked for, and at what cost?

Trains (or reuses, with ``--runs``) the two conditional examples and their
unconditional twins at the same budget:

- ``examples/cgan-shapes.yaml`` against ``examples/dcgan-shapes.yaml``;
- ``examples/guided-ddim-shapes.yaml`` against ``examples/ddim-shapes.yaml``;

each twin trained for as many steps as its conditional model, with the same learning-rate decay.

Each conditional run is scored by ``class-agreement`` (the built-in shapes
classifier's verdict on the shape kind against the label it was generated
for) and FID, overall and per class (intra-FID); the guided diffusion model at
each guidance scale of ``--scales``. The unconditional twin's FID is printed
beside its conditional model's, with their ratio. The floor of agreement is the
classifier itself: its accuracy on real shapes with their own labels.

    python benchmarks/conditional.py [--runs runs/conditional] [--samples 3000] [--scales 0 1 2 3 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PAIRS = [("cgan-shapes", "dcgan-shapes"), ("guided-ddim-shapes", "ddim-shapes")]


def trained(name: str, runs: Path, registry, budget: dict | None = None) -> Path:
    """The run of example ``name`` under ``runs`` (with ``budget``'s train fields instead of the example's), trained
    now unless it has finished before with them."""
    import yaml

    from aigc_kit.core.run import run

    folder = runs / name
    budget = budget or {}
    if (folder / "checkpoints" / "latest").is_file():
        done = yaml.safe_load((folder / "config.yaml").read_text())["train"]
        if all(done.get(key) == value for key, value in budget.items()):
            return folder
    print(f"training {name} ...", flush=True)
    overrides = ["output.overwrite=true"] + [f"train.{key}={value}" for key, value in budget.items()]
    run(EXAMPLES / f"{name}.yaml", registry, output=folder, overrides=overrides)
    return folder


def budget_of(folder: Path) -> dict:
    """What a twin must match: the conditional run's step count and learning-rate decay."""
    import yaml

    train = yaml.safe_load((folder / "config.yaml").read_text())["train"]
    return {"steps": train["steps"], "lr_decay": train["lr_decay"]}


def training_seconds(folder: Path) -> float:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return max(json.loads(line).get("seconds", 0.0) for line in lines if line.strip())


def scored(folder: Path, registry, samples: int, conditional: bool, guidance: float | None = None) -> dict:
    from aigc_kit.core.evaluation import evaluate_run

    metrics = [("fid", {"per_class": conditional, "real_samples": 10000})]
    if conditional:
        metrics.append(("class-agreement", {}))
    started = time.perf_counter()
    report = evaluate_run(folder, registry, metrics, samples, seed=0, guidance=guidance)
    return {**report["values"], "eval_seconds": time.perf_counter() - started}


def classifier_floor(samples: int, resolution: int) -> float:
    """Class agreement of real labelled shapes (black backgrounds, as the examples) with their labels."""
    from aigc_kit.plugins.datasets.shapes import KINDS, ShapesDataset
    from aigc_kit.plugins.metrics.classifier import load_classifier

    dataset = ShapesDataset(resolution, 3, samples, seed=1, backgrounds="black", labels=True)
    items = [dataset[index] for index in range(samples)]
    images = torch.stack([item["sample"] for item in items])
    labels = torch.tensor([KINDS.index(dataset.kinds[item["label"]]) for item in items])
    with torch.no_grad():
        return (load_classifier()(images)[0].argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/conditional"))
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    from aigc_kit.core.registry import default_registry

    registry = default_registry()
    results = {}
    for conditional, unconditional in PAIRS:
        folders = {conditional: trained(conditional, arguments.runs, registry)}
        # the unconditional twin at the same budget: the conditional run's steps and learning-rate decay
        folders[unconditional] = trained(unconditional, arguments.runs, registry, budget_of(folders[conditional]))
        baseline = scored(folders[unconditional], registry, arguments.samples, conditional=False)
        scales = arguments.scales if "ddim" in conditional else [None]
        rows = {str(scale): scored(folders[conditional], registry, arguments.samples, True, scale) for scale in scales}
        results[conditional] = {"baseline": unconditional, "baseline_values": baseline, "by_guidance": rows,
                                "training_seconds": {name: training_seconds(folder)
                                                     for name, folder in folders.items()}}
    floor = {f"{side}x{side}": classifier_floor(arguments.samples, side) for side in (16, 32)}
    floors = ", ".join(f"{side} {value:.4f}" for side, value in floor.items())
    print(f"\n{arguments.samples:,} samples per row, seed 0; FID against the dataset's first 10,000 images in the "
          f"shapes classifier's features. Classifier on real shapes, agreement: {floors}\n")
    print("| model | guidance | class agreement | per class (circle / square / triangle) | FID | intra-FID | "
          "unconditional twin's FID | FID ratio |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, result in results.items():
        base = result["baseline_values"]["fid/fid"]
        for scale, values in result["by_guidance"].items():
            per_class = " / ".join(f"{values[f'class-agreement/agreement/{kind}']:.3f}"
                                   for kind in ("circle", "square", "triangle"))
            print(f"| {name} | {'-' if scale == 'None' else scale} | {values['class-agreement/agreement']:.4f} | "
                  f"{per_class} | {values['fid/fid']:.3f} | {values['fid/intra_fid']:.3f} | "
                  f"{result['baseline']} {base:.3f} | {values['fid/fid'] / base:.2f} |")
    print()
    for result in results.values():
        seconds = ", ".join(f"{run} {value:.0f} s" for run, value in result["training_seconds"].items())
        print(f"training: {seconds}")
    (arguments.runs / "conditional.json").write_text(json.dumps({"floor": floor, **results}, indent=2))


if __name__ == "__main__":
    main()
