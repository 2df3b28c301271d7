"""`aigc-kit new-plugin`: the package it writes installs, is discovered, passes its own tests, trains and exports."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from aigc_kit import testing
from aigc_kit.cli import cli
from aigc_kit.testing.scaffold import SCAFFOLD_KINDS, new_plugin

ALL_KINDS = [option for kind in SCAFFOLD_KINDS for option in ("--kind", kind)]


def fresh_environment(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (torch, aigc-kit) but has nothing installed itself.

    Created without pip: the parent's pip and setuptools (found through the .pth) install into it,
    so nothing is downloaded.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib, "parent_environment.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


@pytest.mark.slow
def test_a_generated_package_installs_is_discovered_passes_its_tests_trains_and_exports(tmp_path):
    package = tmp_path / "aigc-kit-tiny"
    result = CliRunner().invoke(cli, ["new-plugin", "aigc-kit-tiny", "--dir", str(package), *ALL_KINDS])
    assert result.exit_code == 0, result.output
    python = fresh_environment(tmp_path / "venv")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIGC_KIT", "PYTEST"))}

    def run(*arguments: str) -> str:
        done = subprocess.run([str(python), *arguments], cwd=package, env=environment, capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, f"{' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    assert "aigc-kit-tiny" not in run("-m", "aigc_kit.cli", "plugins")  # not there before it is installed
    run("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(package))
    listing = run("-m", "aigc_kit.cli", "plugins")
    assert "tiny  [loaded]  entry point: aigc-kit-tiny 0.1.0" in listing
    assert ("provides: model:tiny, loss:tiny-ragan, sampler:tiny-sphere, dataset:tiny-stripes, metric:tiny-brightness, "
            "exporter:tiny-pt2, callback:tiny-early-stopping" in listing)

    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert f"{len(SCAFFOLD_KINDS)} passed" in tests

    run_dir = tmp_path / "run"
    trained = run("-m", "aigc_kit.cli", "run", "example.yaml", "--output", str(run_dir), "--set", "train.steps=30")
    assert "trained 30 steps" in trained and (run_dir / "checkpoints" / "step-000030").is_dir()
    assert (run_dir / "model.onnx").is_file() and "onnxruntime vs PyTorch: max abs error" in trained
    exported = run("-m", "aigc_kit.cli", "export", str(run_dir), "--format", "tiny-pt2", "--out", str(tmp_path / "m.pt2"))
    assert "max abs error vs PyTorch: 0" in exported and (tmp_path / "m.pt2").is_file()


@pytest.mark.parametrize("kind", SCAFFOLD_KINDS)
def test_each_kind_alone_makes_a_package_whose_component_passes_the_kit(kind, tmp_path, monkeypatch):
    name = f"aigc-kit-only-{kind}"
    package = new_plugin(name, tmp_path / name, (kind,))
    module_name = name.replace("-", "_")
    components = package / "src" / module_name / "components.py"
    assert not _unused_imports(components.read_text()), components.read_text()
    monkeypatch.syspath_prepend(str(package / "src"))
    plugin = importlib.import_module(module_name)
    try:
        registry = testing.isolated_registry(plugin)
        component = {"model": f"only-{kind}", "loss": "only-loss-ragan", "sampler": "only-sampler-sphere",
                     "dataset": "only-dataset-stripes", "metric": "only-metric-brightness",
                     "exporter": "only-exporter-pt2", "callback": "only-callback-early-stopping"}[kind]
        assert registry.names(kind).count(component) == 1
        check = {
            "model": lambda: (testing.check_model(registry, component, resolutions=(16, 64), channels=(1, 3),
                                                  options={"width": 4}),
                              testing.check_model(registry, component, resolutions=(32,), channels=(3,),
                                                  options={"width": 4}, classes=("a", "b", "c"))),
            "loss": lambda: testing.check_loss(registry, component, model_options={"width": 8}, classes=2),
            "sampler": lambda: testing.check_sampler(registry, component, model_options={"width": 8}, classes=2),
            "metric": lambda: testing.check_metric(registry, component, data_options={
                "resolution": 16, "size": 64, "labels": True}),
            "dataset": lambda: testing.check_dataset(registry, component, options={"size": 4, "channels": 1}),
            "exporter": lambda: testing.check_exporter(registry, component, tmp_path, filename="m.pt2",
                                                       model_options={"width": 8}),
            "callback": lambda: _stops_early(testing.check_callback(registry, component, tmp_path, options={
                "monitor": "fid/fid", "mode": "max", "patience": 1}, steps=8)),
        }[kind]
        check()
        config = (package / "example.yaml").read_text()
        # the example trains with the component; an exporter's is shown as a command (the run exports to ONNX)
        assert (f"--format {component} " if kind == "exporter" else f"name: {component}\n") in config
    finally:
        for loaded in [key for key in sys.modules if key.startswith(module_name)]:
            del sys.modules[loaded]


def _stops_early(events: list[tuple[str, int]]) -> None:
    """The example early-stopping callback, asked to keep a value that falls or stays, ends the run early."""
    ends = [step for event, step in events if event == "on_end"]
    assert ends and ends[0] < 8, events


def _unused_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    imported = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", None) != "__future__"
                for alias in node.names}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return sorted(imported - used)


def test_bad_names_kinds_and_folders_are_user_errors_that_write_nothing(tmp_path):
    bad_name = CliRunner().invoke(cli, ["new-plugin", "Tiny_Plugin", "--dir", str(tmp_path / "a")])
    assert bad_name.exit_code == 2 and "NAME" in bad_name.output and "aigc-kit-tiny" in bad_name.output
    assert not (tmp_path / "a").exists()
    bad_kind = CliRunner().invoke(cli, ["new-plugin", "tiny", "--dir", str(tmp_path / "b"), "--kind", "metrics"])
    assert bad_kind.exit_code == 2 and "'metrics' is not one of" in bad_kind.output
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(cli, ["new-plugin", "tiny", "--dir", str(occupied)])
    assert refused.exit_code == 2 and "not empty" in refused.output and "--dir" in refused.output
    assert [path.name for path in occupied.iterdir()] == ["notes.txt"]


def test_the_command_offers_every_kind_the_scaffold_has_an_example_of():
    option = next(param for param in cli.commands["new-plugin"].params if param.name == "kinds")
    assert tuple(option.type.choices) == SCAFFOLD_KINDS
