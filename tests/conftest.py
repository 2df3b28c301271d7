"""Shared fixtures: an isolated registry with the built-ins, a test distribution of plugins, small configs."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from aigc_kit.core.registry import Registry

BUILTIN_PLUGINS = {
    "dcgan": "aigc_kit.plugins.dcgan",
    "gan_losses": "aigc_kit.plugins.gan_losses",
    "latent": "aigc_kit.plugins.latent",
    "datasets": "aigc_kit.plugins.datasets",
    "mlp": "aigc_kit.plugins.mlp",
    "mixtures": "aigc_kit.plugins.mixtures",
    "diffusion": "aigc_kit.plugins.diffusion",
    "metrics": "aigc_kit.plugins.metrics",
    "onnx": "aigc_kit.exporters.onnx",
    "callbacks": "aigc_kit.plugins.callbacks",
}


@pytest.fixture(autouse=True, scope="session")
def builtins_only():
    """Whatever asks for the process-wide registry in a test gets the built-in plugins alone: a third-party plugin
    installed beside aigc-kit must not change what a test sees. (Tests build their registries themselves.)"""
    import aigc_kit.core.registry as registry_module
    from aigc_kit.testing import isolated_registry

    saved, registry_module._default = registry_module._default, isolated_registry()
    yield
    registry_module._default = saved


@pytest.fixture(autouse=True, scope="session")
def feature_cache(tmp_path_factory):
    """Real-data features are cached in a folder of the test session, not the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("aigc-kit-cache")
    previous = os.environ.get("AIGC_KIT_CACHE")
    os.environ["AIGC_KIT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("AIGC_KIT_CACHE", None)
    else:
        os.environ["AIGC_KIT_CACHE"] = previous


@pytest.fixture
def builtin_registry() -> Registry:
    """A registry that discovers nothing and holds only the built-in plugins."""
    registry = Registry(entry_points=False, disabled=(), strict=False)
    for name, module in BUILTIN_PLUGINS.items():
        registry.add_plugin(importlib.import_module(module), name, source="built-in")
    return registry


def tiny_config(**changes) -> dict:
    """A config that trains a 16x16 DCGAN for a few steps in seconds."""
    config = {
        "seed": 0,
        "device": "cpu",
        "data": {"name": "shapes", "resolution": 16, "channels": 3, "size": 64},
        "model": {"name": "dcgan", "latent_dim": 8, "width": 8},
        "loss": {"name": "gan-bce"},
        "sampler": {"name": "normal"},
        # fp32: auto would pick bf16 on some CPUs and fp32 on others, and the tests compare numbers
        "train": {"steps": 4, "batch_size": 8, "precision": "fp32", "log_every": 2, "sample_every": 2,
                  "sample_count": 4, "checkpoint_every": 2, "progress": False},
    }
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config dict as YAML and return its path."""

    def write(config: dict, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def plugin_distribution(tmp_path: Path, monkeypatch):
    """Install fake distributions on sys.path: ``make(dist, version, {entry_name: module_source}, requires)``.

    Each entry point becomes a module of that name and an entry in the
    distribution's ``entry_points.txt`` under the ``aigc_kit`` group, so
    discovery goes through importlib.metadata exactly as for a pip install.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(distribution: str, version: str, plugins: dict[str, str], requires: tuple[str, ...] = ()) -> None:
        info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        requirements = "".join(f"Requires-Dist: {line}\n" for line in requires)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
                                       + requirements)
        lines = ["[aigc_kit]"]
        for entry_name, source in plugins.items():
            module = f"testplug_{distribution.replace('-', '_')}_{entry_name}"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{entry_name} = {module}")
            created.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()

    yield make
    for module in created:
        sys.modules.pop(module, None)


def tiny_unet_config(**changes) -> dict:
    """A UNet at 16x16 small enough to train a few steps in seconds."""
    config = tiny_config(
        model={"name": "unet", "width": 8, "norm_groups": 4, "channel_multipliers": [1, 2],
               "blocks_per_level": 1, "attention_resolutions": [8]},
        loss={"name": "diffusion"},
        sampler={"name": "ddim", "steps": 3},
    )
    config.update(changes)
    return config


CLASSES = ["circle", "square", "triangle"]  # the shapes dataset's kinds, in its order

# plugin modules for the test distributions of plugin_distribution
GOOD = """
from aigc_kit.core.plugin_api import ComponentSpec, ModelBundle, Options, hookimpl

class WidthOptions(Options):
    width: int = 3

def tiny(options, data_shape=None):  # no networks: the tests see which options reached it in the noise shape
    return ModelBundle({}, "tiny", (options.width,))

@hookimpl
def aigc_register_models():
    return [ComponentSpec("tiny", tiny, "A tiny model.", WidthOptions)]
"""

BROKEN_IMPORT = """
raise RuntimeError("this plugin is broken")
"""
