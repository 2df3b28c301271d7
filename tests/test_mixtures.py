"""The 2-D testbed: mixtures, the mode-coverage metric, the mlp and wgan models, and a short WGAN-GP run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from aigc_kit.core.errors import UserError
from aigc_kit.core.run import run


def test_mixtures_have_the_literature_layouts_and_are_deterministic(builtin_registry):
    grid = builtin_registry.create("dataset", "gaussian-mixture", layout="grid", size=5000, seed=1)
    ring = builtin_registry.create("dataset", "gaussian-mixture", layout="ring", size=5000)
    assert grid.dataset.centres.shape == (25, 2) and ring.dataset.centres.shape == (8, 2)
    assert sorted(set(grid.dataset.centres[:, 0].tolist())) == [-4, -2, 0, 2, 4]
    assert np.allclose(np.linalg.norm(ring.dataset.centres, axis=1), 2.0)
    assert (grid.dataset.std, ring.dataset.std) == (0.05, 0.02)
    again = builtin_registry.create("dataset", "gaussian-mixture", layout="grid", size=5000, seed=1)
    assert torch.equal(grid.dataset.points, again.dataset.points)
    nearest = torch.cdist(grid.dataset.points, torch.tensor(grid.dataset.centres, dtype=torch.float32)).min(1).values
    assert nearest.std().item() == pytest.approx(0.05 * np.sqrt(2 - np.pi / 2), rel=0.1)  # Rayleigh spread
    assert grid.info.preview == "scatter" and len(grid.info.landmarks) == 25
    scaled = builtin_registry.create("dataset", "gaussian-mixture", layout="grid", scale=0.5, size=10)
    assert scaled.dataset.std == 0.025 and scaled.dataset.centres.max() == 2.0


def metric_on(builtin_registry, points, layout="grid", **options):
    data = builtin_registry.create("dataset", "gaussian-mixture", layout=layout, size=10)
    metric = builtin_registry.create("metric", "mode-coverage", data=data, **options)
    metric.update(torch.as_tensor(points, dtype=torch.float32))
    return metric.compute(), data


def test_mode_coverage_counts_modes_and_high_quality_samples(builtin_registry):
    data = builtin_registry.create("dataset", "gaussian-mixture", layout="grid", size=10)
    centres = torch.tensor(data.dataset.centres, dtype=torch.float32)
    every_mode = centres.repeat_interleave(100, dim=0) + 0.01 * torch.randn(2500, 2)
    values, _ = metric_on(builtin_registry, every_mode)
    assert values == {"modes": 25.0, "high_quality": 100.0}
    one_mode = centres[:1].expand(2500, 2)
    assert metric_on(builtin_registry, one_mode)[0] == {"modes": 1.0, "high_quality": 100.0}
    between = centres[:1].expand(1000, 2) + torch.tensor([1.0, 0.0])  # halfway to the next centre
    mixed = torch.cat([between, every_mode[:1500]])
    values, _ = metric_on(builtin_registry, mixed)
    assert values["high_quality"] == pytest.approx(60.0)
    assert values["modes"] == 15.0  # the first 1,500 points cover 15 modes with 100 each
    # A mode with fewer than min_count samples is not captured.
    sparse = torch.cat([centres[:1].expand(19, 2), centres[1:2].expand(20, 2)])
    assert metric_on(builtin_registry, sparse)[0]["modes"] == 1.0


def test_mode_coverage_needs_mixture_data(builtin_registry):
    data = builtin_registry.create("dataset", "shapes", size=10)
    with pytest.raises(UserError, match="known modes"):
        builtin_registry.create("metric", "mode-coverage", data=data)


def test_mlp_model_fits_vectors_and_images(builtin_registry):
    vectors = builtin_registry.create("model", "mlp", data_shape=(2,), width=16, depth=2, latent_dim=4)
    points = vectors.networks["generator"](torch.randn(6, 4))
    assert points.shape == (6, 2) and points.abs().max() > 0  # linear output
    assert vectors.networks["discriminator"](points).shape == (6,)
    images = builtin_registry.create("model", "mlp", data_shape=(1, 8, 8), width=16, depth=2)
    fake = images.networks["generator"](torch.randn(3, 8))
    assert fake.shape == (3, 1, 8, 8) and fake.abs().max() <= 1
    packed = builtin_registry.create("model", "mlp", data_shape=(2,), width=16, depth=2, pack=4)
    assert packed.networks["discriminator"](torch.randn(8, 2)).shape == (2,)
    with pytest.raises(ValueError, match="cannot be packed"):
        packed.networks["discriminator"](torch.randn(6, 2))


@pytest.mark.parametrize("norm, layer", [("layer", nn.LayerNorm), ("instance", nn.InstanceNorm2d), ("none", None)])
def test_wgan_critic_has_no_batchnorm(builtin_registry, norm, layer):
    bundle = builtin_registry.create("model", "wgan", resolution=32, channels=3, width=8, critic_norm=norm)
    critic = bundle.networks["discriminator"]
    kinds = {type(m) for m in critic.modules()}
    assert nn.BatchNorm2d not in kinds and nn.Sigmoid not in kinds
    if layer is not None:
        assert layer in kinds
    assert critic(torch.randn(4, 3, 32, 32)).shape == (4,)
    generator = bundle.networks["generator"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in generator.modules())  # the DCGAN generator


def test_packed_dcgan_discriminator_judges_groups(builtin_registry):
    bundle = builtin_registry.create("model", "dcgan", resolution=16, channels=3, width=8, pack=2)
    assert bundle.networks["discriminator"](torch.randn(6, 3, 16, 16)).shape == (3,)


@pytest.mark.slow
def test_a_short_wgan_gp_run_on_the_ring_improves_mode_coverage(tmp_path, write_config, builtin_registry):
    config = {
        "seed": 0,
        "device": "cpu",
        "data": {"name": "gaussian-mixture", "layout": "ring", "scale": 0.5, "size": 20000},
        "model": {"name": "mlp", "latent_dim": 2, "width": 64, "depth": 2},
        "loss": {"name": "wgan-gp", "gp_lambda": 0.1, "discriminator_lr": 1e-3, "generator_lr": 1e-3,
                 "beta1": 0.5},
        "sampler": {"name": "normal"},
        "train": {"steps": 300, "batch_size": 256, "precision": "fp32", "log_every": 100, "sample_every": 300, "sample_count": 500,
                  "checkpoint_every": 300, "progress": False, "eval_every": 300, "ema": {"enabled": False},
                  "eval": {"samples": 1000, "metrics": [{"name": "mode-coverage"}]}},
    }
    config_path = write_config(config)
    untrained = dict(config, train=dict(config["train"], steps=1, eval_every=1))
    before = run(write_config(untrained, "untrained.yaml"), builtin_registry, output=tmp_path / "before")
    after = run(config_path, builtin_registry, output=tmp_path / "after")
    # The untrained generator puts almost nothing within 3 std (0.03) of a mode; 300 steps do measurably better.
    assert before.train.last_eval["mode-coverage/high_quality"] < 1
    assert after.train.last_eval["mode-coverage/high_quality"] >= before.train.last_eval["mode-coverage/high_quality"] + 3
    logged = [json.loads(line) for line in (tmp_path / "after" / "metrics.jsonl").read_text().splitlines()]
    assert any("mode-coverage/modes" in line for line in logged)
    assert (tmp_path / "after" / "samples" / "step-000300.png").is_file()


def test_scatter_draws_samples_over_the_mode_centres(tmp_path):
    from PIL import Image

    from aigc_kit.core.pictures import save_scatter

    path = tmp_path / "scatter.png"
    save_scatter(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), path, (-2.0, 2.0), size=101,
                 landmarks=((-1.0, -1.0), (1.0, -1.0)))
    image = Image.open(path).convert("RGB")

    def at(x: float, y: float) -> tuple[int, ...]:
        return image.getpixel((round((x + 2) / 4 * 100), round(100 - (y + 2) / 4 * 100)))

    assert at(1, 1) == (31, 119, 180)  # a sample
    assert at(-1, -1) == (31, 119, 180)  # a sample drawn over a centre
    ring = image.getpixel((round((1 + 2) / 4 * 100) + 7, round(100 - (-1 + 2) / 4 * 100)))
    assert ring == (214, 39, 40)  # the empty centre's ring
    assert at(0.5, 1.5) == (255, 255, 255)
