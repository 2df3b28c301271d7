"""The command line: startup cost, the plugin listing, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from aigc_kit.cli import cli

from .conftest import BROKEN_IMPORT, GOOD

NO_TORCH = """
import sys
from aigc_kit.cli import main
try:
    main({args!r})
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("torch", "numpy", "onnx", "onnxruntime", "PIL") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def heavy_modules_after(args: list[str]) -> str:
    result = subprocess.run([sys.executable, "-c", NO_TORCH.format(args=args)], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip().splitlines()[-1]


def test_help_and_plugins_do_not_import_torch():
    assert heavy_modules_after(["--help"]) == "HEAVY="
    assert heavy_modules_after(["plugins"]) == "HEAVY="
    assert heavy_modules_after(["plugins", "--json"]) == "HEAVY="


def test_plugins_json_lists_every_builtin_with_components_and_options():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    records = {p["name"]: p for p in data["plugins"]}
    assert records["dcgan"]["components"] == ["model:dcgan", "model:wgan"]
    assert records["dcgan"]["source"] == "built-in" and records["dcgan"]["status"] == "loaded"
    assert records["onnx"]["hooks"] == ["aigc_register_exporters"]
    models = {c["name"]: c for c in data["components"]["model"]}
    assert models["dcgan"]["description"].startswith("DCGAN")
    assert {"resolution", "channels", "latent_dim", "width", "pack", "conditional"} == {
        o["name"] for o in models["dcgan"]["options"]}


def test_plugins_listing_shows_a_failed_plugin_with_its_distribution(plugin_distribution):
    plugin_distribution("bad-plugins", "0.3", {"broken": BROKEN_IMPORT})
    plugin_distribution("good-plugins", "1.0", {"good": GOOD})
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "broken  [failed]  entry point: bad-plugins 0.3" in result.output
    assert "error: import failed: RuntimeError: this plugin is broken" in result.output
    assert "good  [loaded]  entry point: good-plugins 1.0" in result.output
    strict = CliRunner().invoke(cli, ["--strict-plugins", "plugins"])
    assert strict.exit_code == 2 and "this plugin is broken" in strict.output


def test_plugin_option_loads_a_local_file(tmp_path):
    (tmp_path / "extra.py").write_text(GOOD)
    result = CliRunner().invoke(cli, ["--plugin", str(tmp_path / "extra.py"), "plugins"])
    assert result.exit_code == 0
    assert f"extra  [loaded]  local file: {tmp_path / 'extra.py'}" in result.output
    missing = CliRunner().invoke(cli, ["--plugin", str(tmp_path / "missing.py"), "plugins"])
    assert missing.exit_code == 2 and "--plugin" in missing.output and "not found" in missing.output


def test_the_console_script_exits_2_on_a_user_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "aigc_kit.cli", "run", str(tmp_path / "none.yaml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'none.yaml'}: file not found\n  hint: check the path, relative to the working directory".strip()
