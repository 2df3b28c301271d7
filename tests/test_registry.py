"""The registry: discovery, isolation of broken plugins, clashes, strict and disabled plugins, lookups."""

from __future__ import annotations

import sys

import pytest

from aigc_kit.core.errors import UserError
from aigc_kit.core.registry import Registry

from .conftest import BROKEN_IMPORT, GOOD

CLASHING = """
from aigc_kit.core.plugin_api import ComponentSpec, ModelBundle, hookimpl

@hookimpl
def aigc_register_models():
    return [ComponentSpec("tiny", lambda options, data_shape=None: ModelBundle({}, "other", ()), "Another tiny model.")]
"""


MISSPELT_HOOK = """
from aigc_kit.core.plugin_api import ComponentSpec, hookimpl

@hookimpl
def aigc_register_model():
    return []
"""

WRONG_RETURN = """
from aigc_kit.core.plugin_api import hookimpl

@hookimpl
def aigc_register_losses():
    return ["not a spec"]
"""


def test_entry_point_plugin_is_discovered_with_its_distribution(plugin_distribution):
    plugin_distribution("good-plugins", "1.2.3", {"good": GOOD})
    registry = Registry(disabled=(), strict=False)
    record = registry.records["good"]
    assert (record.status, record.source, record.distribution, record.version) == (
        "loaded", "entry point", "good-plugins", "1.2.3")
    assert record.components == ["model:tiny"]
    assert record.hooks == ["aigc_register_models"]
    assert registry.create("model", "tiny", width=7).noise_shape == (7,)


def test_builtins_come_through_the_same_entry_point_group():
    registry = Registry(disabled=(), strict=False)
    builtins = {name: r for name, r in registry.records.items() if r.source == "built-in"}
    assert {"dcgan", "gan_losses", "latent", "datasets", "mlp", "mixtures", "onnx"} <= set(builtins)
    assert all(r.distribution == "aigc-kit" and r.status == "loaded" for r in builtins.values())
    assert {"dcgan"} <= set(registry.names("model")) and "gan-bce" in registry.names("loss")


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_still_load(plugin_distribution):
    plugin_distribution("bad-plugins", "0.1", {"broken": BROKEN_IMPORT})
    plugin_distribution("good-plugins", "1.0", {"good": GOOD})
    registry = Registry(disabled=(), strict=False)
    broken = registry.records["broken"]
    assert broken.status == "failed"
    assert (broken.distribution, broken.version) == ("bad-plugins", "0.1")
    assert "this plugin is broken" in broken.error
    assert registry.records["good"].status == "loaded"
    assert "dcgan" in registry.names("model")


def test_a_misspelt_hook_is_an_error_and_the_plugin_is_unregistered(plugin_distribution):
    plugin_distribution("typo-plugins", "0.1", {"typo": MISSPELT_HOOK})
    registry = Registry(disabled=(), strict=False)
    record = registry.records["typo"]
    assert record.status == "failed"
    assert "aigc_register_model" in record.error
    assert registry.plugin_manager.get_plugin("typo") is None
    registry.plugin_manager.check_pending()  # nothing of the bad plugin is left behind


def test_a_hook_returning_the_wrong_type_is_kept_out(plugin_distribution):
    plugin_distribution("odd-plugins", "0.1", {"odd": WRONG_RETURN})
    registry = Registry(disabled=(), strict=False)
    assert registry.records["odd"].status == "failed"
    assert "ComponentSpec" in registry.records["odd"].error
    assert registry.plugin_manager.get_plugin("odd") is None
    assert "odd" not in {spec.plugin for spec in registry.specs("loss")}


def test_strict_mode_turns_a_failing_plugin_into_a_user_error(plugin_distribution):
    plugin_distribution("bad-plugins", "0.1", {"broken": BROKEN_IMPORT})
    with pytest.raises(UserError, match=r"bad-plugins 0\.1.*this plugin is broken"):
        Registry(disabled=(), strict=True)


def test_strict_mode_can_come_from_the_environment(plugin_distribution, monkeypatch):
    plugin_distribution("bad-plugins", "0.1", {"broken": BROKEN_IMPORT})
    monkeypatch.setenv("AIGC_KIT_STRICT_PLUGINS", "1")
    with pytest.raises(UserError):
        Registry(disabled=())


def test_disabled_plugins_are_never_imported(plugin_distribution, monkeypatch):
    plugin_distribution("bad-plugins", "0.1", {"broken": BROKEN_IMPORT})
    monkeypatch.setenv("AIGC_KIT_DISABLE_PLUGINS", "broken, dcgan")
    registry = Registry(strict=True)  # strict, yet nothing fails: the broken module is never imported
    assert registry.records["broken"].status == "disabled"
    assert "testplug_bad_plugins_broken" not in sys.modules
    assert "dcgan" not in registry.names("model")


def test_a_name_clash_names_both_providers_and_qualified_names_resolve(plugin_distribution):
    plugin_distribution("first-plugins", "1.0", {"first": GOOD})
    plugin_distribution("second-plugins", "2.0", {"second": CLASHING})
    registry = Registry(disabled=(), strict=False)
    with pytest.raises(UserError) as caught:
        registry.spec("model", "tiny")
    message = str(caught.value)
    assert "first-plugins 1.0" in message and "second-plugins 2.0" in message
    assert "'first:tiny'" in message and "'second:tiny'" in message
    assert registry.create("model", "second:tiny").sampling_network == "other"
    assert registry.create("model", "first:tiny").noise_shape == (3,)
    assert {"first:tiny", "second:tiny"} <= set(registry.names("model"))


def test_an_unknown_name_suggests_close_matches(builtin_registry):
    with pytest.raises(UserError) as caught:
        builtin_registry.spec("model", "dcgna")
    assert "unknown model 'dcgna'" in str(caught.value)
    assert "did you mean 'dcgan'" in str(caught.value)


def test_bad_options_name_the_field(builtin_registry):
    with pytest.raises(UserError) as caught:
        builtin_registry.create("model", "dcgan", widht=32)
    assert caught.value.field == "widht"
    assert "did you mean 'width'" in caught.value.hint
    with pytest.raises(UserError) as caught:
        builtin_registry.create("model", "dcgan", resolution=48)
    assert caught.value.field == "resolution"


def test_describe_lists_options_with_defaults(builtin_registry):
    description = builtin_registry.describe("model", "dcgan")
    options = {o["name"]: o for o in description["options"]}
    assert description["plugin"] == "dcgan"
    assert options["latent_dim"]["default"] == 100 and options["width"]["default"] == 64
    assert options["width"]["description"]


def test_local_plugin_file_is_loaded(builtin_registry, tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(GOOD)
    record = builtin_registry.load_local("my_plugin.py", base_dir=tmp_path)
    assert (record.source, record.status) == ("local file", "loaded")
    assert builtin_registry.create("model", "tiny").noise_shape == (3,)


def test_a_broken_local_plugin_is_a_user_error(builtin_registry, tmp_path):
    (tmp_path / "bad.py").write_text(MISSPELT_HOOK)
    with pytest.raises(UserError, match="aigc_register_model"):
        builtin_registry.load_local(str(tmp_path / "bad.py"))
    assert builtin_registry.plugin_manager.get_plugin("bad") is None
    with pytest.raises(UserError, match="not found"):
        builtin_registry.load_local("missing.py", base_dir=tmp_path)


def test_two_distributions_with_the_same_plugin_name_are_both_named(plugin_distribution):
    plugin_distribution("aaa-plugins", "1.0", {"same": GOOD})
    plugin_distribution("bbb-plugins", "2.0", {"same": CLASHING})
    registry = Registry(disabled=(), strict=False)
    failed = [r for r in registry.plugins() if r.status == "failed"]
    assert len(failed) == 1 and registry.records["same"].status == "loaded"
    loaded_from = registry.records["same"].distribution
    assert loaded_from in failed[0].error and failed[0].distribution != loaded_from


NEEDS_A_FUTURE_HOST = GOOD + """
requires_aigc_kit = ">=99"
"""


def test_a_plugin_whose_distribution_needs_another_aigc_kit_is_refused_before_it_is_imported(plugin_distribution):
    plugin_distribution("future-plugins", "2.0", {"future": BROKEN_IMPORT}, requires=("aigc-kit>=99", "numpy"))
    plugin_distribution("extra-plugins", "1.0", {"extra": GOOD}, requires=('aigc-kit>=99; extra == "dev"',))
    registry = Registry(disabled=(), strict=False)
    future = registry.records["future"]
    assert future.status == "failed"
    assert future.error.startswith("incompatible: future-plugins 2.0 requires aigc-kit>=99, and this is aigc-kit ")
    assert "this plugin is broken" not in future.error  # refused without running its code
    assert registry.records["extra"].status == "loaded"  # a requirement of an optional extra is not the host's
    with pytest.raises(UserError, match=r"incompatible: future-plugins 2\.0 requires aigc-kit>=99"):
        Registry(disabled=(), strict=True)


@pytest.mark.parametrize(("declaration", "refusal"), [
    ('requires_aigc_kit = ">=99"', "it declares requires_aigc_kit = '>=99', and this is aigc-kit "),
    ('requires_hook_api = ">=2,<3"', "it declares requires_hook_api = '<3,>=2', and this is hook API 1.0"),
    ('requires_hook_api = "one point oh"', "requires_hook_api = 'one point oh' is not a version specifier"),
])
def test_a_plugin_declaring_versions_this_host_is_not_is_refused(plugin_distribution, declaration, refusal):
    plugin_distribution("picky-plugins", "1.0", {"picky": GOOD + declaration + "\n"})
    registry = Registry(disabled=(), strict=False)
    record = registry.records["picky"]
    assert record.status == "failed" and refusal in record.error
    assert "tiny" not in registry.names("model") and registry.plugin_manager.get_plugin("picky") is None


def test_a_plugin_declaring_the_versions_this_host_is_loads(plugin_distribution):
    plugin_distribution("modest-plugins", "1.0", {"modest": GOOD + 'requires_hook_api = ">=1,<2"\n'
                                                  'requires_aigc_kit = ">=0.1"\n'})
    assert Registry(disabled=(), strict=False).records["modest"].status == "loaded"


def test_a_local_plugin_for_another_host_is_an_error(tmp_path):
    (tmp_path / "future.py").write_text(NEEDS_A_FUTURE_HOST)
    with pytest.raises(UserError, match="could not be loaded: incompatible: it declares requires_aigc_kit"):
        Registry(entry_points=False).load_local(str(tmp_path / "future.py"))


def test_tracing_shows_which_plugin_answered_each_hook_call(plugin_distribution):
    plugin_distribution("good-plugins", "1.0", {"good": GOOD})
    lines: list[str] = []
    Registry(disabled=(), strict=False, trace=lines.append)
    assert "call aigc_register_models()" in lines
    assert "  aigc_register_models <- good: [tiny]" in lines
    assert "  aigc_register_models <- dcgan: [dcgan, wgan]" in lines


def test_tracing_is_switched_on_by_the_environment(plugin_distribution, monkeypatch, capsys):
    plugin_distribution("good-plugins", "1.0", {"good": GOOD})
    monkeypatch.setenv("AIGC_KIT_TRACE_PLUGINS", "1")
    Registry(disabled=(), strict=False)
    assert "aigc-kit trace:   aigc_register_models <- good: [tiny]" in capsys.readouterr().err


def test_implementing_a_deprecated_hook_warns_when_the_plugin_loads():
    import types

    from aigc_kit.core.hookspecs import deprecated_hookspec
    from aigc_kit.core.plugin_api import hookimpl

    class RetiringSpecs:
        @deprecated_hookspec("aigc_register_old_models", since="1.1", removed_in="1.2",
                             instead="aigc_register_models")
        def aigc_register_old_models(self):
            """A hook on its way out."""

    @hookimpl
    def aigc_register_old_models():
        return []

    plugin = types.ModuleType("old_style")
    plugin.aigc_register_old_models = aigc_register_old_models
    registry = Registry(entry_points=False)
    registry.plugin_manager.add_hookspecs(RetiringSpecs)
    with pytest.warns(DeprecationWarning, match="aigc_register_old_models is deprecated since aigc-kit 1.1"):
        record = registry.add_plugin(plugin, "old_style")
    assert record.status == "loaded"
    assert record.warnings == [("the hook aigc_register_old_models is deprecated since aigc-kit 1.1 and goes in 1.2; "
                                "implement aigc_register_models instead")]


def test_every_kind_is_created_from_python_with_its_context(builtin_registry):
    data = builtin_registry.create("dataset", "shapes", resolution=16, size=64, labels=True)
    fid = builtin_registry.create("metric", "fid", data=data, real_samples=32)
    assert hasattr(fid, "update") and hasattr(fid, "compute")
    model = builtin_registry.create("model", "dcgan", data=data, latent_dim=8, width=8)
    assert model.noise_shape == (8,) and set(model.conditions) == {"label"}  # the shape and label are the data's
    assert builtin_registry.create("model", "dcgan", data=data, conditional=False, width=8).conditions == {}
    with pytest.raises(UserError, match="real"):
        builtin_registry.create("metric", "fid")  # no data to compare with


def test_a_factory_gets_a_context_and_an_older_one_its_keywords(builtin_registry):
    from aigc_kit.core.plugin_api import ComponentSpec, Context, NoOptions, hookimpl

    seen = {}

    def newer(options, context):
        seen["newer"] = context
        return builtin_registry.create("metric", "fid", data=context.data)

    def older(options, data=None):
        seen["older"] = data
        return builtin_registry.create("metric", "fid", data=data)

    class Plugin:
        @staticmethod
        @hookimpl
        def aigc_register_metrics():
            return [ComponentSpec("newer", newer, "", NoOptions), ComponentSpec("older", older, "", NoOptions)]

    builtin_registry.add_plugin(Plugin, "context-plugin")
    data = builtin_registry.create("dataset", "shapes", resolution=16, size=8)
    builtin_registry.create("metric", "newer", data=data)
    builtin_registry.create("metric", "older", data=data)
    assert seen["newer"] == Context(data, (3, 16, 16), {}) and seen["older"] is data
