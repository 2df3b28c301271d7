"""The dcgan model, the gan-bce loss and the normal sampler."""

from __future__ import annotations

import pytest
import torch

from aigc_kit.core.errors import UserError


def count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def test_parameter_counts_equal_the_reference_dcgan(builtin_registry):
    bundle = builtin_registry.create("model", "dcgan", resolution=64, channels=3, latent_dim=100, width=64)
    assert count(bundle.networks["generator"]) == 3_576_704
    assert count(bundle.networks["discriminator"]) == 2_765_568
    assert bundle.sampling_network == "generator" and bundle.noise_shape == (100,)


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_every_resolution_and_channel_count(builtin_registry, resolution, channels):
    bundle = builtin_registry.create("model", "dcgan", resolution=resolution, channels=channels, latent_dim=16, width=8)
    generator, discriminator = bundle.networks["generator"], bundle.networks["discriminator"]
    image = generator(torch.randn(3, 16))
    assert image.shape == (3, channels, resolution, resolution)
    assert image.abs().max() <= 1.0  # tanh output
    assert discriminator(image).shape == (3,)


def test_weights_follow_the_dcgan_initialisation(builtin_registry):
    torch.manual_seed(0)
    bundle = builtin_registry.create("model", "dcgan", resolution=64, channels=3)
    generator = bundle.networks["generator"]
    convolution = generator.layers[3].weight
    batch_norm = generator.layers[1]
    assert abs(convolution.std().item() - 0.02) < 0.001 and abs(convolution.mean().item()) < 0.001
    assert abs(batch_norm.weight.mean().item() - 1.0) < 0.01 and batch_norm.bias.abs().max() == 0


def test_model_follows_the_data_and_rejects_a_contradiction(builtin_registry):
    bundle = builtin_registry.create("model", "dcgan", data_shape=(1, 32, 32), width=8)
    assert bundle.networks["generator"](torch.randn(2, 100)).shape == (2, 1, 32, 32)
    with pytest.raises(UserError, match="channels differ"):
        builtin_registry.create("model", "dcgan", data_shape=(1, 32, 32), channels=3)
    with pytest.raises(UserError, match="16, 32, 64 or 128"):
        builtin_registry.create("model", "dcgan", data_shape=(3, 48, 48))


def test_gan_bce_phases_train_the_right_networks(builtin_registry):
    bundle = builtin_registry.create("model", "dcgan", resolution=16, channels=3, latent_dim=8, width=8)
    loss = builtin_registry.create("loss", "gan-bce", discriminator_steps=2)
    assert [(p.name, p.trains, p.repeat) for p in loss.phases] == [
        ("discriminator", ("discriminator",), 2), ("generator", ("generator",), 1)]
    assert loss.phases[0].optimizer.betas == (0.5, 0.999) and loss.phases[0].optimizer.lr == 2e-4
    batch = torch.rand(4, 3, 16, 16) * 2 - 1
    for phase in loss.phases:
        for network in bundle.networks.values():
            network.zero_grad(set_to_none=True)
        value, _ = loss.compute(phase, batch, bundle, step=0)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        trained = bundle.networks[phase.trains[0]]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
        if phase.name == "discriminator":  # fakes are detached: the generator gets nothing
            assert all(p.grad is None for p in bundle.networks["generator"].parameters())


def test_discriminator_loss_is_log4_when_the_discriminator_cannot_tell(builtin_registry):
    bundle = builtin_registry.create("model", "dcgan", resolution=16, channels=1, latent_dim=8, width=8)
    torch.nn.init.zeros_(bundle.networks["discriminator"].layers[-1].weight)  # every logit 0
    loss = builtin_registry.create("loss", "gan-bce")
    value, _ = loss.compute(loss.phases[0], torch.zeros(4, 1, 16, 16), bundle, step=0)
    assert value.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_normal_sampler_is_reproducible_and_truncates(builtin_registry):
    sampler = builtin_registry.create("sampler", "normal", truncation=0.5)
    first = sampler.noise(256, (8,), generator=torch.Generator().manual_seed(1))
    again = sampler.noise(256, (8,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == (256, 8)
    assert first.abs().max() <= 0.5 and first.std() > 0.2
    plain = builtin_registry.create("sampler", "normal").noise(4096, (8,), generator=torch.Generator().manual_seed(1))
    assert plain.abs().max() > 2.5
