"""The GAN loss family: values and gradients on hand-computable cases, clipping, n_critic, autocast."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aigc_kit.core.plugin_api import ModelBundle
from aigc_kit.plugins.gan_losses.losses import gradient_penalty, r1_penalty


class Linear(nn.Module):
    """D(x) = w . x + b per sample: its input gradient is w for every x."""

    def __init__(self, weight: list[float], bias: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.weight + self.bias


class Constant(nn.Module):
    """A generator that always returns the same point, whatever z."""

    def __init__(self, point: list[float]) -> None:
        super().__init__()
        self.point = nn.Parameter(torch.tensor(point))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.point.expand(z.shape[0], -1)


def bundle(critic_weight=(3.0, 4.0), bias=0.0, fake_point=(1.0, 1.0)) -> ModelBundle:
    return ModelBundle({"generator": Constant(list(fake_point)), "discriminator": Linear(list(critic_weight), bias)},
                       sampling_network="generator", noise_shape=(2,))


def test_gradient_penalty_of_a_linear_critic_is_in_closed_form():
    # ||grad D|| = ||w|| = 5 everywhere, so the penalty is (5 - 1)^2 = 16 whatever the interpolates.
    critic = Linear([3.0, 4.0])
    penalty = gradient_penalty(critic, torch.randn(16, 2), torch.randn(16, 2))
    assert penalty.item() == pytest.approx(16.0)
    penalty.backward()  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    assert critic.weight.grad.tolist() == pytest.approx([2 * 4 * 3 / 5, 2 * 4 * 4 / 5])


def test_penalties_are_computed_in_fp32_under_bf16_autocast():
    critic = Linear([3.0, 4.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = gradient_penalty(critic, torch.randn(8, 2), torch.randn(8, 2))
        r1 = r1_penalty(critic, torch.randn(8, 2))
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(16.0, abs=1e-5)
    assert r1.item() == pytest.approx(25.0, abs=1e-5)  # ||w||^2


def test_r1_penalty_is_half_gamma_times_the_squared_gradient_norm(builtin_registry):
    loss = builtin_registry.create("loss", "gan-bce", r1_gamma=10.0)
    models = bundle(critic_weight=(0.0, 0.0), bias=0.0)
    value, logs = loss.compute(loss.phases[0], torch.randn(4, 2), models, step=0)
    # With w = 0 every logit is 0: BCE gives 2 log 2 and the R1 penalty is 0.
    assert value.item() == pytest.approx(2 * math.log(2))
    models = bundle(critic_weight=(1.0, 2.0), bias=0.0)
    _, logs = loss.compute(loss.phases[0], torch.randn(4, 2), models, step=0)
    assert logs["penalty"].item() == pytest.approx(10.0 / 2 * 5.0)


@pytest.mark.parametrize(
    "name, critic_loss, generator_loss",
    [
        # Real points at (0, 0) score b = 0.5; the fake point (1, 1) scores 3 + 4 + 0.5 = 7.5.
        ("wasserstein", 7.5 - 0.5, -7.5),
        ("hinge", max(0, 1 - 0.5) + max(0, 1 + 7.5), -7.5),
        ("lsgan", 0.5 * (0.5 - 1) ** 2 + 0.5 * 7.5**2, 0.5 * (7.5 - 1) ** 2),
        ("gan-bce", math.log1p(math.exp(-0.5)) + math.log1p(math.exp(7.5)), math.log1p(math.exp(-7.5))),
    ],
)
def test_loss_values_on_a_hand_computed_case(builtin_registry, name, critic_loss, generator_loss):
    loss = builtin_registry.create("loss", name)
    models = bundle(critic_weight=(3.0, 4.0), bias=0.5, fake_point=(1.0, 1.0))
    real = torch.zeros(4, 2)
    critic_value, _ = loss.compute(loss.phases[0], real, models, step=0)
    generator_value, _ = loss.compute(loss.phases[1], real, models, step=0)
    assert critic_value.item() == pytest.approx(critic_loss, rel=1e-6)
    assert generator_value.item() == pytest.approx(generator_loss, rel=1e-6)


def test_wgan_gp_adds_lambda_times_the_penalty(builtin_registry):
    loss = builtin_registry.create("loss", "wgan-gp")
    models = bundle(critic_weight=(3.0, 4.0), bias=0.5)
    value, logs = loss.compute(loss.phases[0], torch.zeros(4, 2), models, step=0)
    assert logs["penalty"].item() == pytest.approx(10 * 16.0)
    assert value.item() == pytest.approx(7.0 + 160.0)


def test_the_generator_gradient_moves_fakes_towards_higher_critic_scores(builtin_registry):
    for name in ("wasserstein", "wgan-gp", "hinge", "lsgan", "gan-bce"):
        loss = builtin_registry.create("loss", name)
        models = bundle(critic_weight=(3.0, 4.0), bias=0.0, fake_point=(-1.0, -1.0))
        value, _ = loss.compute(loss.phases[1], torch.zeros(4, 2), models, step=0)
        value.backward()
        gradient = models.networks["generator"].point.grad
        # Descending the loss raises w . x: the gradient points against w = (3, 4).
        assert gradient[0] < 0 and gradient[1] < 0, name


def test_defaults_follow_the_papers(builtin_registry):
    wasserstein = builtin_registry.create("loss", "wasserstein")
    critic, _generator = wasserstein.phases
    assert (critic.repeat, critic.optimizer.name, critic.optimizer.lr) == (5, "rmsprop", 5e-5)
    assert wasserstein.options.clip == 0.01
    gp = builtin_registry.create("loss", "wgan-gp")
    assert (gp.phases[0].repeat, gp.phases[0].optimizer.lr, gp.phases[0].optimizer.betas) == (5, 1e-4, (0.0, 0.9))
    assert gp.options.gp_lambda == 10.0 and gp.phases[0].after_step is None
    assert builtin_registry.create("loss", "hinge").phases[0].repeat == 1


def test_weight_clipping_keeps_every_critic_weight_in_range_during_training(tmp_path, write_config, builtin_registry):
    from aigc_kit.core.checkpoint import load_checkpoint
    from aigc_kit.core.run import run

    from .conftest import tiny_config

    config = tiny_config(model={"name": "wgan", "latent_dim": 8, "width": 8},
                         loss={"name": "wasserstein", "clip": 0.005, "discriminator_lr": 1e-2})
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    weights = load_checkpoint(tmp_path / "run").networks["discriminator"]
    largest = max(t.abs().max().item() for t in weights.values())
    assert largest <= 0.005 + 1e-9
    assert largest == pytest.approx(0.005)  # with lr 1e-2 some weights hit the bound


def test_n_critic_is_honoured(tmp_path, write_config, builtin_registry):
    from aigc_kit.core.checkpoint import load_checkpoint
    from aigc_kit.core.run import run

    from .conftest import tiny_config

    config = tiny_config(model={"name": "wgan", "latent_dim": 8, "width": 8}, loss={"name": "wgan-gp"})
    config["train"]["steps"] = 3
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    optimizers = load_checkpoint(tmp_path / "run").state["optimizers"]
    critic_steps = {int(s["step"]) for s in optimizers["discriminator"]["state"].values()}
    generator_steps = {int(s["step"]) for s in optimizers["generator"]["state"].values()}
    assert critic_steps == {15} and generator_steps == {3}
