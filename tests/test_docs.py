"""The docs stay true: the generated reference is current, every hook is documented, the example plugin runs."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.cli.reference import cli_reference
from aigc_kit.core import hookspecs
from aigc_kit.core.reference import config_reference, hook_reference
from aigc_kit.core.registry import Registry

from .conftest import tiny_config

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_is_current():
    expected = config_reference(Registry(disabled=(), strict=True, builtin_only=True))
    committed = (DOCS / "configuration.md").read_text()
    assert committed == expected, "run: python -m aigc_kit.core.reference > docs/configuration.md"


def test_hook_reference_is_current_and_every_hook_has_a_signature_and_an_example():
    committed = (DOCS / "hooks.md").read_text()
    assert committed == hook_reference(), "run: python -m aigc_kit.core.reference hooks > docs/hooks.md"
    specified = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "aigc_kit_spec")}
    assert specified == set(hookspecs.HOOK_FOR_KIND.values())  # the reference walks HOOK_FOR_KIND
    for name in hookspecs.HOOK_FOR_KIND.values():
        assert f"def {name}() -> list[ComponentSpec]:" in committed
        assert "Example::" in getattr(hookspecs, name).__doc__, f"{name} has no example"


def test_cli_reference_is_current():
    committed = (DOCS / "cli.md").read_text()
    assert committed == cli_reference(), "run: python -m aigc_kit.cli.reference > docs/cli.md"
    for name in cli.commands:
        assert f"## `aigc-kit {name}`" in committed


def test_every_hook_is_documented_with_its_factory():
    text = (DOCS / "plugins.md").read_text()
    for name in hookspecs.HOOK_FOR_KIND.values():
        assert re.search(rf"\| `{name}` \| `factory\(", text), name
        assert getattr(hookspecs, name).__doc__.strip()


def test_the_example_plugin_in_the_guide_trains(tmp_path, write_config):
    code = re.search(r"```python\n(# my_plugin\.py\n.*?)```", (DOCS / "plugins.md").read_text(), re.DOTALL).group(1)
    (tmp_path / "my_plugin.py").write_text(code)
    config = tiny_config(plugins=["my_plugin.py"], model={"name": "tiny"})
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "samples" / "step-000004.png").is_file()
