"""The mlflow and wandb callbacks against real stores: MLflow's SQLite store and its server, W&B's offline files.

Each is read back with the tracker's own means: MLflow's client, and W&B's record format (its protobuf records,
in the log file an offline run writes). Without the extras (pip install -e '.[mlflow,wandb]') these tests skip.
"""

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from aigc_kit.cli import cli

from .conftest import tiny_config


def tracked_config(entry, **train):
    return tiny_config(callbacks=[entry], export={"format": "onnx"},
                       train={**tiny_config()["train"], "eval_every": 2, **train,
                              "eval": {"samples": 16, "metrics": [{"name": "fid", "real_samples": 32}]}})


def invoke(*arguments):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


# -- MLflow ---------------------------------------------------------------------


@pytest.fixture
def mlflow_client():
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
    from mlflow.tracking import MlflowClient

    return MlflowClient


def test_mlflow_gets_the_config_metrics_pictures_export_and_tags(mlflow_client, write_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    result = invoke("run", write_config(tracked_config({"name": "mlflow", "experiment": "shapes"})),
                    "--output", run_dir)
    assert result.exit_code == 0, result.output
    identity = json.loads((run_dir / "trackers" / "mlflow.json").read_text())
    assert identity["tracking_uri"] == f"sqlite:///{(run_dir / 'trackers' / 'mlflow.db').resolve()}"
    assert f"mlflow logs to {identity['tracking_uri']}\n" in result.output  # said before training
    client = mlflow_client(identity["tracking_uri"])
    tracked = client.get_run(identity["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert client.get_experiment(tracked.info.experiment_id).name == "shapes"
    params = tracked.data.params
    assert params["train.steps"] == "4" and params["model.name"] == "dcgan" and params["train.eval.metrics.0.name"] == "fid"
    assert [(m.step, round(m.value, 5)) for m in client.get_metric_history(identity["run_id"], "generator/loss")] == [
        (record["step"], round(record["generator/loss"], 5)) for record in _metrics(run_dir) if "generator/loss" in record]
    assert [m.step for m in client.get_metric_history(identity["run_id"], "fid/fid")] == [2, 4]
    assert tracked.data.tags["aigc-kit.plugin.dcgan"].startswith("aigc-kit") and "aigc-kit.torch" in tracked.data.tags
    artifacts = {item.path for folder in ("samples", "export") for item in client.list_artifacts(identity["run_id"], folder)}
    assert artifacts == {"samples/step-000002.png", "samples/step-000004.png", "export/model.onnx"}


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(mlflow_client, write_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    assert invoke("run", write_config(tracked_config({"name": "mlflow"})), "--output", run_dir).exit_code == 0
    first = json.loads((run_dir / "trackers" / "mlflow.json").read_text())
    result = invoke("resume", run_dir, "--set", "train.steps=6")
    assert result.exit_code == 0, result.output
    assert f"mlflow logs to {first['tracking_uri']}" in result.output  # the run's own config named it
    assert json.loads((run_dir / "trackers" / "mlflow.json").read_text()) == first
    client = mlflow_client(first["tracking_uri"])
    assert [m.step for m in client.get_metric_history(first["run_id"], "fid/fid")] == [2, 4, 6]
    assert len(client.search_runs([client.get_run(first["run_id"]).info.experiment_id])) == 1


def test_mlflow_down_warns_once_and_the_run_trains_on(mlflow_client, write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    entry = {"name": "mlflow", "tracking_uri": f"http://127.0.0.1:{_free_port()}", "flush_seconds": 30}
    result = invoke("run", write_config(tracked_config(entry)), "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.onnx").is_file() and len(_metrics(tmp_path / "run")) == 4
    assert result.output.count("the mlflow tracker") == 1, result.output
    assert "the mlflow tracker failed (open): MlflowException" in result.output
    assert "Connection refused" in result.output and "training goes on without it" in result.output


@pytest.mark.slow
def test_mlflow_server_on_localhost_gets_the_run(mlflow_client, write_config, tmp_path, monkeypatch):
    import shutil

    command = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    if command is None:
        pytest.skip("this mlflow has no server (mlflow-skinny): pip install mlflow")
    port = _free_port()
    server = subprocess.Popen(
        [command, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", seconds=90)
        uri = f"http://127.0.0.1:{port}"
        result = invoke("run", write_config(tracked_config({"name": "mlflow", "tracking_uri": uri})),
                        "--output", tmp_path / "run")
        assert result.exit_code == 0, result.output
        run_id = json.loads((tmp_path / "run" / "trackers" / "mlflow.json").read_text())["run_id"]
        client = mlflow_client(uri)
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "fid/fid")] == [2, 4]
        assert {item.path for item in client.list_artifacts(run_id, "export")} == {"export/model.onnx"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- Weights & Biases -------------------------------------------------------------


@pytest.fixture
def wandb_records():
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install -e '.[wandb]'")
    from wandb.proto import wandb_internal_pb2

    def read(path):
        """Every record of an offline run's log: W&B's header, then 32 KiB blocks of (crc, length, type) chunks."""
        data = path.read_bytes()
        assert data[:4] == b":W&B", path
        records, pending, at, block = [], b"", 7, 32768
        while at + 7 <= len(data):
            left = block - at % block
            if left < 7:  # a block's tail too short for a chunk header is padding
                at += left
                continue
            _, length, kind = struct.unpack("<IHB", data[at:at + 7])
            if kind == 0:
                at += left
                continue
            payload, at = data[at + 7:at + 7 + length], at + 7 + length
            pending = payload if kind in (1, 2) else pending + payload
            if kind in (1, 4):  # a whole record, or the last chunk of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
        return records

    return read


def _history(records):
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_writes_the_config_metrics_pictures_and_export(wandb_records, write_config, tmp_path):
    run_dir = tmp_path / "run"
    entry = {"name": "wandb", "mode": "offline", "project": "shapes", "tags": ["tiny"]}
    result = invoke("run", write_config(tracked_config(entry)), "--output", run_dir)
    assert result.exit_code == 0, result.output
    assert f"wandb logs to W&B project shapes (offline; files in {run_dir / 'trackers' / 'wandb'})" in result.output
    run_id = json.loads((run_dir / "trackers" / "wandb.json").read_text())["run_id"]
    [log] = glob.glob(str(run_dir / "trackers" / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))
    records = wandb_records(type(run_dir)(log))
    opened = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert len(opened) == 1, ([record.WhichOneof("record_type") for record in records], result.output)
    opened = opened[0]
    config = {item.key: json.loads(item.value_json) for item in opened.config.update}
    assert config["train"]["steps"] == 4 and config["model"]["name"] == "dcgan"
    assert opened.project == "shapes" and opened.display_name == "run" and "tiny" in opened.tags
    assert any(tag.startswith("aigc-kit.plugin.dcgan=") for tag in opened.tags)
    rows = _history(records)
    logged = {}
    for row in rows:  # W&B writes a step's row when the next step begins; a row may come in parts
        logged.setdefault(row["_step"], {}).update(row)
    assert [step for step in sorted(logged) if "generator/loss" in logged[step]] == [2, 4]
    assert round(logged[4]["generator/loss"], 5) == round(_metrics(run_dir)[-2]["generator/loss"], 5)
    assert "fid/fid" in logged[2] and logged[4]["samples/_type"] == "image-file"
    assert len(glob.glob(str(run_dir / "trackers" / "wandb" / "offline-run-*" / "files" / "media" / "images" / "*.png"))) == 2
    kinds = [record.WhichOneof("record_type") for record in records]
    assert "artifact" in kinds
    [ended] = [record.exit for record in records if record.WhichOneof("record_type") == "exit"]
    assert ended.exit_code == 0


def test_a_resumed_run_goes_on_in_the_same_wandb_run(wandb_records, write_config, tmp_path):
    run_dir = tmp_path / "run"
    entry = {"name": "wandb", "mode": "offline"}
    assert invoke("run", write_config(tracked_config(entry)), "--output", run_dir).exit_code == 0
    run_id = json.loads((run_dir / "trackers" / "wandb.json").read_text())["run_id"]
    result = invoke("resume", run_dir, "--set", "train.steps=6")
    assert result.exit_code == 0, result.output
    logs = sorted(glob.glob(str(run_dir / "trackers" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(logs) == 2 and all(log.endswith(f"run-{run_id}.wandb") for log in logs)
    steps = {row["_step"] for log in logs for row in _history(wandb_records(type(run_dir)(log)))}
    assert {2, 4, 6} <= steps
