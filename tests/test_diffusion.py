"""The diffusion plugins in runs: the UNet, the DDPM loss, the shared schedule, EMA and sample grids."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.core.components import build_components
from aigc_kit.core.config import parse_config
from aigc_kit.core.ema import EMA
from aigc_kit.core.errors import UserError
from aigc_kit.core.registry import Registry
from aigc_kit.core.run import check, run
from aigc_kit.plugins.diffusion.unet import SelfAttention, UNet

from .conftest import tiny_config, tiny_unet_config

# -- the network -------------------------------------------------------------------------


@pytest.mark.parametrize("channels, resolution, multipliers", [(1, 16, (1, 2)), (3, 32, (1, 2, 2)),
                                                                (3, 64, (1, 1, 2, 2)), (1, 128, (1, 1, 2, 2, 2))])
def test_unet_output_has_the_input_shape_at_every_supported_size(channels, resolution, multipliers):
    net = UNet(channels, resolution, width=8, channel_multipliers=multipliers, blocks_per_level=1,
               attention_resolutions=(resolution // 2,), norm_groups=4)
    x = torch.randn(2, channels, resolution, resolution)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_unet_places_attention_at_the_asked_resolutions_and_in_the_middle():
    def attention_layers(resolutions):
        net = UNet(3, 32, width=8, channel_multipliers=(1, 2, 2), blocks_per_level=2,
                   attention_resolutions=resolutions, norm_groups=4)
        return sum(isinstance(m, SelfAttention) for m in net.modules())

    assert attention_layers(()) == 1  # the middle block only
    assert attention_layers((8,)) == 1 + 2 + 3  # two blocks down and three up at 8x8
    assert attention_layers((32, 8)) == 1 + 2 * (2 + 3)


def test_unet_output_depends_on_the_timestep_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet(3, 16, width=8, channel_multipliers=(1, 2), blocks_per_level=1, attention_resolutions=(8,),
               norm_groups=4, dropout=0.0)
    torch.nn.init.normal_(net.output[-1].weight, std=0.1)  # the last layer starts at zero
    x = torch.randn(1, 3, 16, 16).expand(2, 3, 16, 16)
    out = net(x, torch.tensor([5, 800]))
    assert not torch.allclose(out[0], out[1])
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("scale_shift", [True, False])
def test_the_time_and_class_reach_a_level_of_one_channel_per_group_only_through_scale_and_shift(scale_shift):
    # width 32, one level, 32 groups: each GroupNorm normalises every channel on its own
    torch.manual_seed(0)
    net = UNet(3, 16, width=32, channel_multipliers=(1,), blocks_per_level=1, attention_resolutions=(), norm_groups=32,
               classes=3, scale_shift=scale_shift).eval()
    torch.nn.init.normal_(net.output[-1].weight, std=0.1)  # the last layer starts at zero
    x = torch.randn(1, 3, 16, 16).expand(3, 3, 16, 16)
    with torch.no_grad():
        by_label = net(x, torch.full((3,), 500), torch.tensor([0, 1, 2]))
        by_time = net(x, torch.tensor([5, 500, 995]), torch.zeros(3, dtype=torch.long))
    for out in (by_label, by_time):
        change = (out[1:] - out[0]).abs().max() / out[0].abs().max()
        # a shift added before a per-channel GroupNorm is subtracted again with the channel's mean
        assert (change > 1e-2) if scale_shift else (change < 1e-5)


def test_unet_options_refuse_channels_that_groupnorm_cannot_split(builtin_registry: Registry, write_config):
    config = tiny_unet_config()
    config["model"]["norm_groups"] = 3
    with pytest.raises(UserError) as error:
        check(write_config(config), builtin_registry)
    assert error.value.field == "model.norm_groups" and "here 8" in str(error.value)


def test_sampler_steps_beyond_the_models_training_timesteps_are_refused_on_the_steps_field(builtin_registry,
                                                                                           write_config):
    config = tiny_unet_config(sampler={"name": "ddim", "steps": 300})
    config["model"]["schedule"] = {"num_train_timesteps": 200}
    with pytest.raises(UserError) as error:
        check(write_config(config), builtin_registry)
    assert error.value.field == "sampler.steps" and "at most num_train_timesteps (200)" in str(error.value)


# -- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_is_zero_for_the_ideal_prediction_and_trains_the_denoiser(builtin_registry, prediction_type):
    loss = builtin_registry.create("loss", "diffusion", prediction_type=prediction_type)
    assert [(p.name, p.trains) for p in loss.phases] == [("denoiser", ("denoiser",))]

    class Oracle(torch.nn.Module):
        """Knows the clean batch, so recovers the noise from x_t exactly and returns the true target."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x_t, timesteps):
            x0 = batch
            a = loss.schedule.alpha_bar(timesteps, x_t)
            epsilon = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return self.scale * loss.schedule.target(x0, epsilon, timesteps)

    from aigc_kit.core.plugin_api import ModelBundle

    batch = torch.rand(4, 3, 8, 8) * 2 - 1
    oracle = Oracle()
    bundle = ModelBundle({"denoiser": oracle}, "denoiser", (3, 8, 8))
    value, _ = loss.compute(loss.phases[0], batch, bundle, step=1)
    assert value.item() == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        oracle.scale.fill_(0.5)
    value, _ = loss.compute(loss.phases[0], batch, bundle, step=1)
    value.backward()
    assert value.item() > 1e-3 and oracle.scale.grad.item() < 0


@pytest.mark.parametrize("prediction_type, weight", [
    ("epsilon", lambda snr, gamma: min(snr, gamma) / snr),
    ("v_prediction", lambda snr, gamma: min(snr, gamma) / (snr + 1)),
    ("sample", lambda snr, gamma: min(snr, gamma)),
])
def test_min_snr_weights_follow_hang_et_al(builtin_registry, prediction_type, weight):
    loss = builtin_registry.create("loss", "diffusion", prediction_type=prediction_type, min_snr_gamma=5.0)
    timesteps = torch.tensor([0, 50, 200, 999])
    alpha_bar = loss.schedule.alphas_cumprod[timesteps]
    expected = [weight(float(a / (1 - a)), 5.0) for a in alpha_bar]
    assert loss.weights(timesteps).tolist() == pytest.approx(expected, rel=1e-9)
    assert float(alpha_bar[0] / (1 - alpha_bar[0])) > 5.0 > float(alpha_bar[-1] / (1 - alpha_bar[-1]))


# -- one schedule for the model, the loss and the sampler -----------------------------------


def test_the_schedule_set_on_the_model_reaches_the_loss_and_the_sampler(builtin_registry, write_config):
    config = tiny_unet_config()
    config["model"]["schedule"] = {"beta_schedule": "cosine", "num_train_timesteps": 400, "prediction_type": "v_prediction"}
    loaded, _ = check(write_config(config), builtin_registry)
    components = build_components(loaded, builtin_registry, model_on_meta=True)
    assert torch.equal(components.loss.schedule.alphas_cumprod, components.sampler.schedule.alphas_cumprod)
    assert len(components.sampler.schedule.alphas_cumprod) == 400
    assert components.loss.schedule.prediction_type == components.sampler.schedule.prediction_type == "v_prediction"
    resolved = loaded.resolved()
    assert resolved["sampler"]["beta_schedule"] == resolved["loss"]["beta_schedule"] == "cosine"


def test_a_sampler_section_contradicting_the_models_schedule_is_refused(builtin_registry, write_config):
    config = tiny_unet_config()
    config["sampler"]["prediction_type"] = "sample"
    path = write_config(config)
    with pytest.raises(UserError) as error:
        check(path, builtin_registry)
    assert error.value.field == "sampler.prediction_type"
    assert error.value.file == str(path) and "epsilon" in str(error.value)
    config["sampler"]["prediction_type"] = "epsilon"  # agreeing is allowed
    check(write_config(config), builtin_registry)


def test_a_sampler_that_takes_no_schedule_is_refused_for_a_diffusion_model(builtin_registry, write_config):
    result = CliRunner().invoke(cli, ["validate", str(write_config(tiny_unet_config(sampler={"name": "normal"})))])
    assert result.exit_code == 2
    assert "sampler.name" in result.output and "'normal' cannot be used with model 'unet'" in result.output
    assert "Traceback" not in result.output


def test_a_gan_model_with_a_diffusion_sampler_keeps_the_samplers_own_options(builtin_registry):
    loaded = parse_config(tiny_config(sampler={"name": "ddim", "steps": 4}), builtin_registry)
    components = build_components(loaded, builtin_registry, model_on_meta=True)
    assert len(components.sampler.timesteps) == 4 and components.model.shared_options == {}


# -- EMA --------------------------------------------------------------------------------------


def test_ema_power_warmup_follows_the_diffusion_practice_and_caps_at_the_decay():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.999, warmup="power", power=0.75)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(99) == pytest.approx(1 - 100**-0.75)
    assert ema.decay_at(100_000) == 0.999
    assert EMA(torch.nn.Linear(2, 2), 0.99, warmup="ratio").decay_at(8) == pytest.approx(9 / 18)
    assert EMA(torch.nn.Linear(2, 2), 0.99, warmup="none").decay_at(0) == 0.99


def test_ema_warmup_accepts_the_earlier_true_and_false(builtin_registry):
    config = tiny_config()
    config["train"]["ema"] = {"warmup": False}
    assert parse_config(config, builtin_registry).config.train.ema.warmup == "none"


# -- end to end -------------------------------------------------------------------------------


def test_a_unet_trains_samples_with_ddim_from_its_ema_weights_and_checkpoints(builtin_registry, write_config, tmp_path):
    outcome = run(write_config(tiny_unet_config()), builtin_registry, output=tmp_path / "run")
    assert outcome.train.steps == 4
    assert (tmp_path / "run" / "samples" / "step-000004.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000004"
    logs = outcome.train.last_logs
    assert set(logs) == {"denoiser/loss"} and 0 < logs["denoiser/loss"] < 10


def test_sample_grids_of_a_stochastic_sampler_repeat_and_leave_trainings_random_stream_alone(builtin_registry, tmp_path):
    from aigc_kit.core.loop import Trainer

    loaded = parse_config(tiny_unet_config(sampler={"name": "ddim", "steps": 3, "eta": 1.0}), builtin_registry)
    trainer = Trainer(build_components(loaded, builtin_registry), loaded.config, loaded.resolved(), tmp_path,
                      torch.device("cpu"))
    grid = dict(trainer.callbacks.named)["sample-grid"]
    grid.on_start(trainer.run)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, second = grid.write(trainer.run, 1), grid.write(trainer.run, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.read_bytes() == second.read_bytes()
