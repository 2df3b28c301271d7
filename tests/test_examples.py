"""Every shipped example config validates and runs end to end (shortened)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from aigc_kit.cli import cli

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
SHORT = ["train.steps=2", "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2",
         "train.batch_size=8", "train.progress=false", "train.precision=fp32"]


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"dcgan-shapes.yaml", "wgan-gp-shapes.yaml", "wgan-gp-grid.yaml", "ddim-shapes.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(example):
    result = CliRunner().invoke(cli, ["validate", str(example)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_end_to_end_when_shortened(example, tmp_path):
    overrides = list(SHORT)
    text = example.read_text()
    if "name: shapes" in text:
        overrides += ["data.size=64", "data.resolution=16", "train.sample_count=4"]
    if "eval:" in text:
        overrides += ["train.eval.samples=300", "train.eval_every=2", "data.size=1000", "train.sample_count=100"]
    args = ["run", str(example), "--output", str(tmp_path / "run")]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()
    if "export:" in text:
        assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_lets_the_hardware_choose_its_precision(example):
    from aigc_kit.core.config import load_config
    from aigc_kit.testing import isolated_registry

    assert load_config(example, isolated_registry()).config.train.precision == "auto"
