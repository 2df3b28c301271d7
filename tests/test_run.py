"""End to end: `aigc-kit run` writes its run directory; checkpoints reload; the ONNX export matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aigc_kit.cli import cli
from aigc_kit.core.checkpoint import load_checkpoint
from aigc_kit.core.components import build_components
from aigc_kit.core.config import load_config
from aigc_kit.core.errors import UserError, ValidationFailed
from aigc_kit.core.run import run
from aigc_kit.core.trained import export
from aigc_kit.exporters import onnx_validation

from .conftest import tiny_config


def test_run_writes_samples_checkpoints_metrics_and_a_validated_onnx_model(tmp_path, write_config):
    config = tiny_config(export={"format": "onnx", "file": "model.onnx"})
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    assert "max abs error" in result.output
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    grid = Image.open(run_dir / "samples" / "step-000004.png")
    assert grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 4 samples of 16x16 in a 2x2 grid with 2-pixel padding
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert {"discriminator/loss", "generator/loss", "steps_per_second"} <= set(lines[0])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000004"
    assert (run_dir / "config.yaml").is_file()

    session = onnxruntime.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["aigc_kit.inputs"])[0]["shape"] == ["batch", 8] and meta["aigc_kit.model"] == "dcgan"
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    images = session.run(None, {"z": np.random.default_rng(0).standard_normal((7, 8), dtype=np.float32)})[0]
    assert images.shape == (7, 3, 16, 16)

    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.step == 4
    assert set(checkpoint.networks) == {"generator", "discriminator"} and set(checkpoint.ema) == {"generator"}
    assert set(checkpoint.state["optimizers"]) == {"discriminator", "generator"}
    assert len(checkpoint.state["config_fingerprint"]) == 16

    # The EMA generator in the checkpoint is what was exported.
    loaded = load_config(run_dir / "config.yaml", _registry())
    generator = build_components(loaded, _registry()).model.networks["generator"]
    generator.load_state_dict(checkpoint.ema["generator"])
    noise = torch.randn(3, 8)
    expected = generator.eval()(noise).detach().numpy()
    assert np.abs(session.run(None, {"z": noise.numpy()})[0] - expected).max() < 1e-4


def _registry():
    from aigc_kit.testing import isolated_registry

    return isolated_registry()


def test_training_changes_the_weights_and_lowers_nothing_to_nan(tmp_path, write_config, builtin_registry):
    config = tiny_config()
    config["train"]["steps"] = 6
    outcome = run(write_config(config), builtin_registry, output=tmp_path / "run")
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000002")
    last = load_checkpoint(tmp_path / "run")
    weight = "layers.0.weight"
    assert not torch.equal(first.networks["generator"][weight], last.networks["generator"][weight])
    assert all(np.isfinite(v) for v in outcome.train.last_logs.values())


def test_export_command_exports_a_run_directory(tmp_path, write_config, builtin_registry):
    run(write_config(tiny_config()), builtin_registry, output=tmp_path / "run")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "g.onnx")])
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert model.opset_import[0].version == 18
    missing = CliRunner().invoke(cli, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "no such run directory" in missing.output


def test_an_existing_run_is_not_overwritten(tmp_path, write_config, builtin_registry):
    path = write_config(tiny_config())
    run(path, builtin_registry, output=tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run"):
        run(path, builtin_registry, output=tmp_path / "run")
    run(path, builtin_registry, output=tmp_path / "run", overrides=["output.overwrite=true", "train.steps=2"])
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-000002.png"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000002"


def test_a_disagreeing_runtime_fails_the_export_loudly(tmp_path, write_config, builtin_registry, monkeypatch):
    run(write_config(tiny_config()), builtin_registry, output=tmp_path / "run")
    real_session = onnx_validation.open_session

    class OffByALittle:
        def __init__(self, path):
            self.session = real_session(path)

        def run(self, names, feeds):
            return [out + 1e-3 for out in self.session.run(names, feeds)]

        def __getattr__(self, name):
            return getattr(self.session, name)

    monkeypatch.setattr(onnx_validation, "open_session", OffByALittle)
    out = tmp_path / "g.onnx"
    with pytest.raises(ValidationFailed) as caught:
        export(tmp_path / "run", builtin_registry, out=out)
    assert caught.value.report["max_abs_error"] == pytest.approx(1e-3, rel=1e-2)
    assert caught.value.report["batch_sizes"] == [1, 2, 5]
    assert not out.exists() and (tmp_path / "g.failed.onnx").exists()


def test_compare_uses_absolute_and_relative_tolerance():
    expected = np.array([[1.0, 100.0]], dtype=np.float32)
    within = onnx_validation.compare(expected, expected + np.array([[5e-5, 0.05]], dtype=np.float32), 1e-4, 1e-3, 1)
    beyond = onnx_validation.compare(expected, expected + np.array([[2e-4, 0.0]], dtype=np.float32), 1e-4, 0.0, 1)
    assert within["passed"] and not beyond["passed"]
    assert beyond["where"] == [0, 0]
    wrong_shape = onnx_validation.compare(expected, expected[:, :1], 1e-4, 1e-3, 1)
    assert not wrong_shape["passed"]


def test_a_corrupt_checkpoint_is_a_user_error(tmp_path, write_config, builtin_registry):
    run(write_config(tiny_config()), builtin_registry, output=tmp_path / "run")
    weights = tmp_path / "run" / "checkpoints" / "step-000004" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot read the weights"):
        load_checkpoint(tmp_path / "run")
    state = tmp_path / "run" / "checkpoints" / "step-000002" / "state.pt"
    state.write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would call a function
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000002\n")
    with pytest.raises(UserError, match="cannot read the training state"):
        load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("decay, factor", [("none", 1.0), ("linear", 0.0), ("cosine", 0.0)])
def test_learning_rates_decay_over_the_run(tmp_path, write_config, builtin_registry, decay, factor):
    config = tiny_config()
    config["train"]["lr_decay"] = decay
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run").state
    for phase in ("discriminator", "generator"):
        group = state["optimizers"][phase]["param_groups"][0]
        assert group["lr"] == pytest.approx(2e-4 * factor, abs=1e-12)
        assert group["initial_lr"] == pytest.approx(2e-4)
    halfway = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000002").state
    expected = {"none": 1.0, "linear": 0.5, "cosine": 0.5}[decay]
    assert halfway["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * expected)


def test_tensorboard_gets_the_logged_scalars_and_the_sample_pictures(builtin_registry, write_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config()
    config["train"]["tensorboard"] = True
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"discriminator/loss", "generator/loss", "steps_per_second"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("generator/loss")] == [2, 4]
    logged = [json.loads(line)["generator/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [event.value for event in events.Scalars("generator/loss")] == pytest.approx(logged, rel=1e-5)
    assert [event.step for event in events.Images("samples")] == [2, 4]
