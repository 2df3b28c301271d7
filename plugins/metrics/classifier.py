"""The built-in feature extractor for ``shapes``: a small classifier of shape kind and colour.

Trained by ``python -m aigc_kit.plugins.metrics.classifier --out shapes_classifier.safetensors``
on freshly drawn shapes (every resolution, both backgrounds, colour and grey); the
committed weights are the output of that command with its default seed. Its
128-dimensional penultimate layer is the feature space of ``fid``, ``kid``,
``precision-recall`` and ``density-coverage``: it separates exactly what a
``shapes`` generator must get right (which shape, which colour, how clean).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigc_kit.plugins.drawing import KINDS, draw_labelled_shape, to_tensor

WEIGHTS = Path(__file__).with_name("shapes_classifier.safetensors")
INPUT_SIDE = 32
FEATURES = 128
COLOUR_BINS = 8  # the shape's colour, each channel above or below the middle: 2 x 2 x 2
RESOLUTIONS = (16, 32, 64)
DEFAULT_SEED = 20261123
FEATURE_DIVISOR = 11.57
"""Features are the penultimate layer divided by this: twice its mean (5.787) over 1,000 fresh shapes
(seed 5), so that features average 0.5, about as Inception's pool features do. This keeps KID's
cubic kernel (x.y / 128 + 1)^3 near 1 instead of near 95^3; it scales FID by 1 / 11.57^2."""


class ShapesClassifier(nn.Module):
    """3x32x32 in [-1, 1] -> 128 features -> shape kind (3) and colour bin (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128 * 4 * 4, FEATURES), nn.ReLU(),
        )
        self.kind = nn.Linear(FEATURES, len(KINDS))
        self.colour = nn.Linear(FEATURES, COLOUR_BINS)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The metrics' features of images of any side and 1 or 3 channels in [-1, 1] (see FEATURE_DIVISOR)."""
        return self.body(prepare(images)) / FEATURE_DIVISOR

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(prepare(images))
        return self.kind(hidden), self.colour(hidden)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """Grey to three channels, any side to 32 (area-averaged down, bilinear up)."""
    images = images.float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    side = images.shape[-1]
    if side > INPUT_SIDE:
        images = F.adaptive_avg_pool2d(images, INPUT_SIDE)
    elif side < INPUT_SIDE:
        images = F.interpolate(images, size=INPUT_SIDE, mode="bilinear", align_corners=False)
    return images


def load_classifier() -> ShapesClassifier:
    """The committed classifier, in eval mode."""
    from safetensors.torch import load_file

    network = ShapesClassifier()
    network.load_state_dict(load_file(WEIGHTS))
    return network.eval().requires_grad_(False)


def labelled_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` shapes at 32x32 (drawn at 16, 32 or 64), with kind and colour-bin labels."""
    rng = np.random.default_rng(seed)
    images, kinds, colours = [], [], []
    for index in range(count):
        resolution = int(rng.choice(RESOLUTIONS))
        backgrounds = "black" if rng.random() < 0.5 else "varied"
        image, kind, colour = draw_labelled_shape(index, seed, resolution, KINDS, backgrounds)
        tensor = to_tensor(image)
        if rng.random() < 0.2:
            tensor = tensor.mean(0, keepdim=True)
        images.append(prepare(tensor[None])[0])
        kinds.append(KINDS.index(kind))
        colours.append(colour_bin(colour))
    return torch.stack(images), torch.tensor(kinds), torch.tensor(colours)


def colour_bin(colour: tuple[int, int, int]) -> int:
    return sum((1 << bit) for bit, channel in enumerate(colour) if channel >= 128)


def accuracy(network: ShapesClassifier, images: torch.Tensor, kinds: torch.Tensor,
             colours: torch.Tensor) -> tuple[float, float]:
    """Kind and colour-bin accuracy (colour only on colour images: grey ones do not show it)."""
    with torch.no_grad():
        kind_logits, colour_logits = network(images)
    in_colour = (images[:, 0] != images[:, 1]).flatten(1).any(1)
    kind_accuracy = (kind_logits.argmax(1) == kinds).float().mean().item()
    colour_accuracy = (colour_logits.argmax(1) == colours)[in_colour].float().mean().item()
    return kind_accuracy, colour_accuracy


def train(seed: int = DEFAULT_SEED, images: int = 30000, steps: int = 4000, batch_size: int = 128) -> ShapesClassifier:
    """Train the classifier from ``seed`` alone (data, initialisation and batches)."""
    torch.manual_seed(seed)
    data, kinds, colours = labelled_shapes(images, seed)
    network = ShapesClassifier()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = torch.randint(len(data), (batch_size,), generator=order)
        kind_logits, colour_logits = network(data[batch])
        grey = (data[batch][:, 0] == data[batch][:, 1]).flatten(1).all(1)
        loss = F.cross_entropy(kind_logits, kinds[batch]) + (
            F.cross_entropy(colour_logits, colours[batch], reduction="none")[~grey].mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    return network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--steps", type=int, default=4000)
    arguments = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    started = time.perf_counter()
    network = train(arguments.seed, steps=arguments.steps)
    from safetensors.torch import save_file

    save_file({name: value.contiguous() for name, value in network.state_dict().items()}, arguments.out)
    test = labelled_shapes(3000, arguments.seed + 1)
    kind_accuracy, colour_accuracy = accuracy(network, *test)
    print(f"trained in {time.perf_counter() - started:.0f} s; on 3,000 fresh shapes: kind accuracy "
          f"{kind_accuracy:.4f}, colour accuracy {colour_accuracy:.4f}; weights: {arguments.out}")


if __name__ == "__main__":
    main()
