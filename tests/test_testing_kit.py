"""The conformance kit: it passes the built-in components and catches broken ones, and works as a pytest plugin."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch

from aigc_kit import testing
from aigc_kit.core.plugin_api import ComponentSpec, DatasetBundle, DatasetInfo, ModelBundle, Options, Phase, hookimpl

pytest_plugins = ["pytester"]


def plugin_offering(hook: str, spec: ComponentSpec) -> types.ModuleType:
    module = types.ModuleType(f"plugin_with_{spec.name.replace('-', '_')}")
    setattr(module, hook, hookimpl(lambda: [spec]))
    return module


def test_the_isolated_registry_holds_the_builtins_and_the_plugin_under_test_only(plugin_distribution):
    plugin_distribution("other-plugins", "1.0", {"other": """
from aigc_kit.core.plugin_api import ComponentSpec, hookimpl

@hookimpl
def aigc_register_models():
    return [ComponentSpec("other", lambda options, data_shape=None: None, "Installed elsewhere.")]
"""})
    mine = plugin_offering("aigc_register_samplers", ComponentSpec("mine", lambda options: None, "Mine."))
    registry = testing.isolated_registry(mine)
    assert "mine" in registry.names("sampler") and "dcgan" in registry.names("model")
    assert "other" not in registry.names("model")
    assert "other" not in testing.isolated_registry(builtins=False).names("model")
    assert testing.isolated_registry(builtins=False).names("model") == []


def test_builtin_components_pass_their_checks(tmp_path):
    registry = testing.isolated_registry()
    testing.check_model(registry, "dcgan", resolutions=(16, 32), channels=(1, 3), options={"width": 8})
    testing.check_model(registry, "unet", resolutions=(16,), channels=(3,), sampler="ddim",
                        sampler_options={"steps": 2}, options={"width": 32, "channel_multipliers": [1, 2]})
    for loss in ("gan-bce", "wgan-gp", "hinge"):
        testing.check_loss(registry, loss, model_options={"width": 8})
    testing.check_loss(registry, "diffusion", model="unet", model_options={"width": 32, "channel_multipliers": [1]})
    testing.check_sampler(registry, "normal", model_options={"width": 8})
    testing.check_dataset(registry, "shapes", options={"resolution": 16, "size": 16})
    report = testing.check_exporter(registry, "onnx", tmp_path, filename="g.onnx", model_options={"width": 8},
                                    options={"validate_batch_sizes": [2]})
    assert report["max_abs_error"] < 1e-4


class WrongSize(torch.nn.Module):
    def forward(self, z):
        return torch.zeros(z.shape[0], 3, 8, 8)


def test_a_model_whose_samples_have_the_wrong_shape_fails():
    bundle = ModelBundle({"generator": WrongSize()}, "generator", (4,))
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_models", ComponentSpec("wrong", lambda options, data_shape=None: bundle, "Wrong.")))
    with pytest.raises(AssertionError, match=r"model 'wrong' at data shape \(3, 16, 16\): samples: expected shape "
                                             r"\(2, 3, 16, 16\), got \(2, 3, 8, 8\)"):
        testing.check_model(registry, "wrong", resolutions=(16,), channels=(3,))


class DetachedGeneratorLoss:
    """A GAN loss whose generator phase forgets to backpropagate into the generator."""

    def __init__(self):
        self.phases = [Phase("discriminator", ("discriminator",)), Phase("generator", ("generator",), uses_data=False)]

    def compute(self, phase, batch, bundle, step):
        fake = bundle.networks["generator"](torch.randn(batch.shape[0], bundle.noise_shape[0])).detach()
        score = bundle.networks["discriminator"](fake).mean()
        return (score if phase.name == "discriminator" else -score), {}


def test_a_loss_whose_gradients_miss_the_phase_networks_fails():
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_losses", ComponentSpec("detached", lambda options: DetachedGeneratorLoss(), "Broken.")))
    with pytest.raises(AssertionError, match="loss 'detached', phase 'generator': the loss does not depend"):
        testing.check_loss(registry, "detached", model_options={"width": 8})


class UnseededSampler:
    """Draws noise from torch's global generator, ignoring the one it is given."""

    def noise(self, n, shape, generator=None, device=None):
        return torch.randn(n, *shape)

    def sample(self, network, noise, generator=None):
        return network(noise)


def test_a_sampler_that_ignores_its_generator_fails_the_reproducibility_check():
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_samplers", ComponentSpec("unseeded", lambda options: UnseededSampler(), "Broken.")))
    with pytest.raises(AssertionError, match="sampler 'unseeded': the same seed gave different noise"):
        testing.check_sampler(registry, "unseeded", model_options={"width": 8})


class SizeOptions(Options):
    size: int = 4


def test_a_dataset_outside_its_declared_range_fails():
    def build(options):
        images = torch.linspace(0, 2, options.size * 3 * 4 * 4).reshape(options.size, 3, 4, 4)
        return DatasetBundle(images, DatasetInfo((3, 4, 4), (-1.0, 1.0)))

    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_datasets", ComponentSpec("bright", build, "Broken.", SizeOptions)))
    with pytest.raises(AssertionError, match=r"dataset 'bright', item 2: values from .* outside the declared "
                                             r"value_range \(-1.0, 1.0\)"):
        testing.check_dataset(registry, "bright")


class OffByOneExporter:
    """Writes a file, but what it runs is off from PyTorch."""

    def export(self, request):
        open(request.path, "wb").close()
        return {"ok": True}

    def load(self, path):
        return lambda noise: np.zeros((noise.shape[0], 3, 16, 16), np.float32) + 1


def test_an_exporter_whose_file_disagrees_with_pytorch_fails(tmp_path):
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_exporters", ComponentSpec("off", lambda options: OffByOneExporter(), "Broken.")))
    with pytest.raises(AssertionError, match="exporter 'off': the file's samples differ from PyTorch's by up to"):
        testing.check_exporter(registry, "off", tmp_path, model_options={"width": 8})


def test_a_plugins_tests_get_the_kit_as_fixtures_without_imports(pytester):
    pytester.makepyfile(tiny_plugin="""
        from aigc_kit.core.plugin_api import ComponentSpec, hookimpl

        class Sampler:
            def noise(self, n, shape, generator=None, device=None):
                import torch
                return torch.randn(n, *shape, generator=generator)

            def sample(self, network, noise, generator=None):
                return network(noise)

        @hookimpl
        def aigc_register_samplers():
            return [ComponentSpec("plain", lambda options: Sampler(), "Plain normal noise.")]
    """)
    pytester.makepyfile(test_tiny="""
        import tiny_plugin

        def test_sampler(aigc_kit):
            aigc_kit.check_sampler(aigc_kit.registry(tiny_plugin), "plain", model_options={"width": 8})

        def test_registry_is_isolated(aigc_registry):
            assert "plain" not in aigc_registry.names("sampler") and "dcgan" in aigc_registry.names("model")
    """)
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_builtin_conditional_components_pass_their_checks_with_classes(tmp_path):
    registry = testing.isolated_registry()
    small_unet = {"width": 32, "channel_multipliers": [1]}  # one channel per GroupNorm group: see docs/diffusion.md
    testing.check_model(registry, "dcgan", resolutions=(16,), channels=(3,), options={"width": 8}, classes=3)
    testing.check_model(registry, "unet", resolutions=(16,), channels=(3,), sampler="ddim", classes=("a", "b"),
                        sampler_options={"steps": 2, "guidance_scale": 3.0}, options=small_unet)
    for loss in ("gan-bce", "hinge", "wgan-gp"):
        testing.check_loss(registry, loss, model_options={"width": 8}, classes=3)
    testing.check_loss(registry, "diffusion", model="unet", model_options=small_unet, classes=3)
    testing.check_sampler(registry, "normal", model_options={"width": 8}, classes=3)
    testing.check_sampler(registry, "ddim", model="unet", model_options=small_unet, options={"steps": 2}, classes=3)
    testing.check_dataset(registry, "shapes", options={"resolution": 16, "size": 16, "labels": True})
    testing.check_exporter(registry, "onnx", tmp_path, filename="c.onnx", model_options={"width": 8}, classes=3,
                           options={"validate_batch_sizes": [2]})
    values = testing.check_metric(registry, "class-agreement", samples=48,
                                  data_options={"resolution": 16, "size": 48, "labels": True})
    assert values["agreement"] > 0.9  # real shapes, given their own labels
    testing.check_metric(registry, "fid", options={"real_samples": 32})


class LabelBlind(torch.nn.Module):
    """Takes a label, and ignores it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3 * 16 * 16)

    def forward(self, z, label=None):
        return torch.tanh(self.linear(z)).view(-1, 3, 16, 16)


def test_conditional_checks_catch_a_model_that_ignores_its_classes_or_its_labels():
    from aigc_kit.core.plugin_api import Condition

    registry = testing.isolated_registry(plugin_offering("aigc_register_models", ComponentSpec(
        "deaf", lambda options, data_shape=None: ModelBundle({"generator": LabelBlind()}, "generator", (4,)), "Deaf.")))
    with pytest.raises(AssertionError, match="model 'deaf': built for data with 3 classes, its ModelBundle takes no "
                                             "label"):
        testing.check_model(registry, "deaf", resolutions=(16,), channels=(3,), classes=3)

    def blind(options, data_shape=None, conditions=None):
        return ModelBundle({"generator": LabelBlind()}, "generator", (4,), conditions=dict(conditions or {}))

    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_models", ComponentSpec("blind", blind, "Blind.")))
    testing.check_model(registry, "blind", resolutions=(16,), channels=(3,))  # fine without classes
    with pytest.raises(AssertionError, match="the same noise with other labels gave the same samples"):
        testing.check_model(registry, "blind", resolutions=(16,), channels=(3,), classes=3)
    with pytest.raises(AssertionError, match="sampler 'normal': other labels gave the same samples"):
        testing.check_sampler(registry, "normal", model="blind", classes=3)
    assert Condition(classes=("a", "b")).count == 2


class LabelDropLoss(DetachedGeneratorLoss):
    """Takes the batch's conditions and drops them: the conditional networks get random labels."""

    def compute(self, phase, batch, bundle, step, conditions=None):
        label = torch.randint(0, 3, (batch.shape[0],))
        fake = bundle.networks["generator"](torch.randn(batch.shape[0], bundle.noise_shape[0]), label=label)
        score = bundle.networks["discriminator"](fake if phase.name == "generator" else batch, label=label).mean()
        return (score if phase.name == "discriminator" else -score), {}


def test_conditional_checks_catch_a_loss_that_drops_the_labels():
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_losses", ComponentSpec("drop", lambda options: LabelDropLoss(), "Broken.")))
    testing.check_loss(registry, "drop", model_options={"width": 8})
    with pytest.raises(AssertionError, match="phase 'discriminator': the gradients are the same for other labels"):
        testing.check_loss(registry, "drop", model_options={"width": 8}, classes=3)


def test_conditional_checks_catch_items_that_do_not_carry_what_the_dataset_declares():
    from aigc_kit.core.plugin_api import Condition

    def build(pairs: bool, label: int = 1):
        images = torch.zeros(4, 3, 4, 4)
        items = [(image, label) for image in images] if pairs else [{"sample": image, "label": label}
                                                                      for image in images]
        return DatasetBundle(items, DatasetInfo((3, 4, 4), conditions={"label": Condition(classes=("a", "b"))}))

    for name, factory, message in (
            ("pairs", lambda options: build(True), r"expected a mapping with keys \['label', 'sample'\], got tuple"),
            ("outside", lambda options: build(False, 2), "label 2 is outside the 2 declared classes"),
            ("undeclared", lambda options: DatasetBundle([(torch.zeros(3, 4, 4), 0)], DatasetInfo((3, 4, 4))),
             "a tuple, where a dataset that declares no conditions gives the sample tensor")):
        registry = testing.isolated_registry(plugin_offering(
            "aigc_register_datasets", ComponentSpec(name, factory, "Broken.", SizeOptions)))
        with pytest.raises(AssertionError, match=message):
            testing.check_dataset(registry, name)


class Hoarder:
    """A metric whose compute forgets to reset."""

    def __init__(self):
        self.seen = []

    def update(self, samples):
        self.seen.append(samples.mean().item())

    def compute(self):
        return {"mean": sum(self.seen) / len(self.seen), "count": float(len(self.seen))}


def test_the_metric_check_catches_a_metric_that_keeps_what_it_computed():
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_metrics", ComponentSpec("hoarder", lambda options, data=None: Hoarder(), "Broken.")))
    with pytest.raises(AssertionError, match="compute must reset what update collected"):
        testing.check_metric(registry, "hoarder")


class LabelDeafExporter(OffByOneExporter):
    """Runs the generator it was given, for label 0 whatever the label asked."""

    def export(self, request):
        self.network = request.network
        return super().export(request)

    def load(self, path):
        def run(noise, label=None):
            with torch.no_grad():
                return self.network(torch.from_numpy(noise), label=torch.zeros(noise.shape[0]).long()).numpy()

        return run


def test_the_conditional_exporter_check_catches_a_file_that_ignores_the_label(tmp_path):
    registry = testing.isolated_registry(plugin_offering(
        "aigc_register_exporters", ComponentSpec("deaf", lambda options: LabelDeafExporter(), "Broken.")))
    with pytest.raises(AssertionError, match=r"exporter 'deaf' with labels \[0, 1, 2\]: the file's samples differ"):
        testing.check_exporter(registry, "deaf", tmp_path, model_options={"width": 8}, classes=3)


def test_the_kit_refuses_what_a_run_refuses_with_the_runs_own_message():
    registry = testing.isolated_registry()
    small_unet = {"width": 32, "channel_multipliers": [1]}
    with pytest.raises(AssertionError, match=re.escape("a run would refuse this: sampler.name: sampler 'normal' cannot "
                                                       "be used with model 'unet': the model fixes beta_schedule")):
        testing.check_sampler(registry, "normal", model="unet", model_options=small_unet)
    with pytest.raises(AssertionError, match=re.escape("a run would refuse this: sampler.prediction_type: the model "
                                                       "fixes this option for its loss and sampler")):
        testing.check_sampler(registry, "ddim", model="unet", model_options=small_unet,
                              options={"steps": 2, "prediction_type": "v_prediction"})
    testing.check_sampler(registry, "ddim", model="unet", model_options={**small_unet, "schedule": {
        "prediction_type": "v_prediction"}}, options={"steps": 2, "prediction_type": "v_prediction"})
