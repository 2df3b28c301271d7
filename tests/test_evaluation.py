"""Metric plugins in use: feature extractors, the real-feature cache, `aigc-kit eval`, the best checkpoint, the report."""

from __future__ import annotations

import html
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import DatasetBundle, DatasetInfo
from aigc_kit.core.run import run
from aigc_kit.plugins.metrics import classifier, features

from .conftest import tiny_config

FEW = ["--option", "fid.real_samples=64", "--option", "precision-recall.real_samples=64"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A tiny DCGAN run on shapes that evaluates fid every 4 steps and keeps its best checkpoint."""
    from aigc_kit.testing import isolated_registry

    folder = tmp_path_factory.mktemp("evaluated")
    train = {**tiny_config()["train"], "steps": 12, "eval_every": 4, "checkpoint_every": 12, "keep_checkpoints": 1,
             "eval": {"samples": 64, "metrics": [{"name": "fid", "real_samples": 64}], "best": "fid/fid"}}
    config = tiny_config(train=train, export={"format": "onnx", "file": "model.onnx"})
    (folder / "run.yaml").write_text(json.dumps(config))
    run(folder / "run.yaml", isolated_registry(), output=folder / "run")
    return folder / "run"


def test_the_shapes_classifier_recognises_fresh_shapes():
    network = classifier.load_classifier()
    kind_accuracy, colour_accuracy = classifier.accuracy(network, *classifier.labelled_shapes(600, seed=7))
    assert kind_accuracy > 0.95 and colour_accuracy > 0.9


def test_a_torchscript_or_onnx_extractor_the_user_names_gives_the_networks_features(tmp_path):
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 3, 8, 8)), tmp_path / "net.pt")
    torch.onnx.export(network, (torch.zeros(1, 3, 8, 8),), tmp_path / "net.onnx", dynamo=False,
                      input_names=["images"], dynamic_axes={"images": {0: "n"}})
    images = torch.rand(5, 1, 6, 6) * 2 - 1  # grey, 6x6, in [-1, 1]
    resized = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(8, 8), mode="bilinear",
                                              align_corners=False)
    expected = network((resized + 1) / 2 * 255)
    for name in ("net.pt", "net.onnx"):
        extractor = features.load_extractor(str(tmp_path / name), input_size=8, input_range=(0.0, 255.0))
        assert torch.allclose(extractor(images), expected, atol=1e-4), name
    with pytest.raises(UserError, match="no such feature extractor"):
        features.load_extractor(str(tmp_path / "inception.pt"))


def test_real_features_are_computed_once_and_keyed_by_what_produced_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_KIT_CACHE", str(tmp_path))
    calls = []
    extractor = features.Extractor("mean", "mean-v1", lambda images: calls.append(len(images)) or images.mean((2, 3)))
    data = DatasetBundle(torch.rand(40, 3, 4, 4), DatasetInfo((3, 4, 4)))
    first = features.real_features(data, extractor, 30, batch_size=16)
    again = features.real_features(data, extractor, 30, batch_size=16)
    assert torch.equal(first, again) and sum(calls) == 30  # the second call read the cache
    other = DatasetBundle(torch.rand(40, 3, 4, 4), DatasetInfo((3, 4, 4)))
    features.real_features(other, extractor, 30)
    features.real_features(data, features.Extractor("mean", "mean-v2", extractor._run), 30)
    assert sum(calls) == 90  # another dataset, another extractor: computed again
    assert len(list((tmp_path / "real-features").glob("*.safetensors"))) == 3


def test_eval_prints_a_table_and_writes_json_for_a_run_and_its_export(shapes_run, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(shapes_run), "--metric", "fid", "--metric", "precision-recall",
                                      "-n", "64", *FEW])
    assert result.exit_code == 0, result.output
    report = json.loads((shapes_run / "eval.json").read_text())
    assert set(report["values"]) == {"fid/fid", "precision-recall/precision", "precision-recall/recall"}
    assert f"fid/fid                     {report['values']['fid/fid']:.6g}" in result.output
    assert report["values"]["fid/fid"] > 0 and 0 <= report["values"]["precision-recall/recall"] <= 1

    exported = CliRunner().invoke(cli, ["eval", str(shapes_run / "model.onnx"), "--metric", "fid", "-n", "64",
                                        "--option", "fid.real_samples=64", "--out", str(tmp_path / "onnx.json")])
    assert exported.exit_code == 0, exported.output
    from_onnx = json.loads((tmp_path / "onnx.json").read_text())
    assert from_onnx["provider"] == "CPUExecutionProvider" and from_onnx["values"]["fid/fid"] > 0


def test_eval_errors_name_the_option(shapes_run):
    unknown = CliRunner().invoke(cli, ["eval", str(shapes_run), "--metric", "fidd"])
    assert unknown.exit_code == 2 and "unknown metric 'fidd'" in unknown.output and "'fid'" in unknown.output
    stray = CliRunner().invoke(cli, ["eval", str(shapes_run), "--metric", "fid", "--option", "kid.subsets=3"])
    assert stray.exit_code == 2 and "--option" in stray.output
    bad = CliRunner().invoke(cli, ["eval", str(shapes_run), "--metric", "fid", "--option", "fid.real_samples=-1"])
    assert bad.exit_code == 2 and "real_samples" in bad.output


def test_the_best_checkpoint_by_the_chosen_metric_is_kept(shapes_run):
    evaluations = [json.loads(line) for line in (shapes_run / "metrics.jsonl").read_text().splitlines()
                   if "fid/fid" in line]
    assert [record["step"] for record in evaluations] == [4, 8, 12]
    best_step = min(evaluations, key=lambda record: record["fid/fid"])["step"]
    best = (shapes_run / "checkpoints" / "best").read_text().strip()
    assert best == f"step-{best_step:06d}"
    assert (shapes_run / "checkpoints" / best / "weights.safetensors").is_file()  # not pruned (keep 1)
    exported = CliRunner().invoke(cli, ["export", str(shapes_run / "checkpoints" / "best"), "--out",
                                        str(shapes_run / "best.onnx")])
    assert exported.exit_code == 0, exported.output


def test_a_best_metric_that_is_not_evaluated_is_a_config_error(write_config, tmp_path):
    train = {**tiny_config()["train"], "eval_every": 2, "eval": {"metrics": [{"name": "fid"}], "best": "kid/kid"}}
    result = CliRunner().invoke(cli, ["validate", str(write_config(tiny_config(train=train)))])
    assert result.exit_code == 2 and "train.eval.best" in result.output and "kid/kid" in result.output


def test_the_report_holds_curves_samples_config_and_environment(shapes_run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(shapes_run), "--out", str(tmp_path / "r" / "report.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    for section in ("Losses per phase", "Metrics", "Samples over training", "Environment", "Config"):
        assert f">{section}<" in page
    assert page.count('src="data:image/png;base64,') == 3 + len(list((shapes_run / "samples").glob("*.png")))
    text = html.unescape(page)
    assert '"torch": "' in text and "gan-bce" in text and "<td>12</td>" in page  # environment, config, evaluations
    assert {path.name for path in (tmp_path / "r").glob("*.png")} == {"losses.png", "speed.png", "metrics.png"}


def browser() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


@pytest.mark.skipif(browser() is None, reason="no Chromium or Chrome installed (Debian: apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(shapes_run, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    CliRunner().invoke(cli, ["report", str(shapes_run), "--out", str(page)])
    shot = tmp_path / "shot.png"
    subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1100,1400", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # matplotlib's first line colour (#1f77b4) is on screen only if the embedded figures were decoded and drawn
    plotted = (np.abs(pixels - [31, 119, 180]).sum(1) < 30).sum()
    assert plotted > 200, "no plotted line is visible in the rendered page"


def test_report_of_a_run_that_has_not_logged_yet_and_of_a_folder_that_is_no_run(tmp_path, write_config):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("data: {name: shapes}\ntrain: {steps: 10}\n")
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report" / "report.html").read_text()
    assert "No training logs yet" in page and "No sample grids yet" in page and "Not recorded" in page
    missing = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "not a run directory" in missing.output and "runs/NAME" in missing.output


def test_eval_of_an_onnx_file_without_its_data_section_says_what_to_do(shapes_run, tmp_path):
    import onnx

    model = onnx.load_model(str(shapes_run / "model.onnx"))
    kept = [entry for entry in model.metadata_props if entry.key != "aigc_kit.data"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save_model(model, str(tmp_path / "old.onnx"))
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "old.onnx"), "--metric", "fid", "-n", "8"])
    assert result.exit_code == 2 and "does not say which dataset" in result.output and "export it again" in result.output


def test_a_resumed_run_keeps_comparing_with_the_best_before_it_stopped(write_config, tmp_path):
    import torch as torch_

    train = {**tiny_config()["train"], "steps": 8, "eval_every": 4, "checkpoint_every": 4, "keep_checkpoints": 1,
             "eval": {"samples": 32, "metrics": [{"name": "fid", "real_samples": 64}], "best": "fid/fid",
                      "best_mode": "max"}}  # max: the first evaluations of a barely trained GAN score highest
    config = write_config(tiny_config(train=train))
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(config), "--output", str(run_dir)]).exit_code == 0
    resumed = CliRunner().invoke(cli, ["resume", str(run_dir), "--set", "train.steps=16"])
    assert resumed.exit_code == 0, resumed.output
    values = {record["step"]: record["fid/fid"] for record in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                                                   .splitlines()) if "fid/fid" in record}
    assert sorted(values) == [4, 8, 12, 16]
    best_step = max(values, key=values.get)
    assert (run_dir / "checkpoints" / "best").read_text().strip() == f"step-{best_step:06d}"
    state = torch_.load(run_dir / "checkpoints" / "step-000016" / "state.pt", weights_only=True)
    assert state["callbacks"]["best-checkpoint"] == {"key": "fid/fid", "mode": "max", "value": pytest.approx(max(values.values()), rel=1e-5)}


def test_evaluate_feeds_every_metric_in_batches_and_reports_progress():
    from aigc_kit.core.evaluation import evaluate

    class Counting:
        def __init__(self):
            self.seen = []

        def update(self, samples):
            self.seen.append(samples.shape[0])

        def compute(self):
            return {"count": sum(self.seen)}

    metric, done = Counting(), []
    values = evaluate({"counting": metric}, lambda n: torch.zeros(n, 3), 1234, batch_size=500, progress=done.append)
    assert metric.seen == [500, 500, 234] and done == [500, 500, 234]
    assert values == {"counting/count": 1234.0}
