"""Callbacks: the events and their order, stop requests, state across a resume, errors, and the built-in ones."""

import json
import threading
import warnings

import pytest
import torch
from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.core.callbacks import Callbacks, Run
from aigc_kit.core.components import build_components
from aigc_kit.core.config import parse_config
from aigc_kit.core.errors import UserError
from aigc_kit.plugins.callbacks.trackers import Tracker, Worker

from .conftest import tiny_config

RECORDER = '''
import json
from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl
from pydantic import Field


class RecorderOptions(Options):
    stop_at: int = Field(0, description="Ask the run to stop after this step (0: never).")
    fail_in: str = Field("", description="Raise in this event.")


class Recorder:
    def __init__(self, options):
        self.options = options
        self.count = 0
        self.loaded = None

    def _note(self, run, event, *details):
        with open(run.run_dir / "events.jsonl", "a") as handle:
            handle.write(json.dumps([event, run.step, *details]) + "\\n")
        if event == self.options.fail_in:
            raise ValueError("asked to fail")

    def on_start(self, run):
        self._note(run, "on_start", self.loaded)

    def on_log(self, run, step, logs):
        self._note(run, "on_log", step, sorted(logs))

    def on_step(self, run, step):
        self.count += 1
        self._note(run, "on_step", step)
        if step == self.options.stop_at:
            run.request_stop("enough")

    def on_samples(self, run, step, path):
        self._note(run, "on_samples", step, path.name)

    def on_evaluate(self, run, step, values):
        self._note(run, "on_evaluate", step, sorted(values))

    def on_checkpoint(self, run, step, path):
        self._note(run, "on_checkpoint", step, path.name)

    def on_interrupt(self, run, step, signal):
        self._note(run, "on_interrupt", step, signal)

    def on_export(self, run, path, report):
        self._note(run, "on_export", path.name)

    def on_end(self, run, outcome):
        self._note(run, "on_end", outcome)

    def state(self):
        return {"count": self.count}

    def load_state(self, state):
        self.loaded = state
        self.count = state["count"]


@hookimpl
def aigc_register_callbacks():
    return [ComponentSpec("recorder", Recorder, "Notes every event.", RecorderOptions)]
'''


@pytest.fixture
def recorder_config(tmp_path):
    (tmp_path / "recorder.py").write_text(RECORDER)

    def config(**options):
        train = {**tiny_config()["train"], "eval_every": 2, "eval": {"samples": 16, "metrics": [
            {"name": "fid", "real_samples": 32}]}}
        return tiny_config(plugins=["recorder.py"], train=train, export={"format": "onnx"},
                           callbacks=[{"name": "recorder", **options}])

    return config


def events(run_dir):
    return [tuple(json.loads(line)) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def invoke(*arguments):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def test_a_local_callback_hears_every_event_in_the_documented_order(recorder_config, write_config, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("run", write_config(recorder_config()), "--output", run_dir)
    assert result.exit_code == 0, result.output
    seen = events(run_dir)
    assert seen[0] == ("on_start", 0, None)
    assert seen[1] == ("on_step", 1, 1)
    losses = ["discriminator/fake_score", "discriminator/loss", "discriminator/real_score", "generator/loss",
              "seconds", "steps_per_second"]
    for step in (2, 4):  # log; the built-ins' on_step leads to samples and an evaluation, then ours; checkpoint
        at = seen.index(("on_log", step, step, losses))
        assert seen[at:at + 5] == [("on_log", step, step, losses),
                                   ("on_samples", step, step, f"step-{step:06d}.png"),
                                   ("on_evaluate", step, step, ["fid/fid"]), ("on_step", step, step),
                                   ("on_checkpoint", step, step, f"step-{step:06d}")]
    assert seen[-2:] == [("on_export", 4, "model.onnx"), ("on_end", 4, "finished")]


def test_a_callback_stops_the_run_with_a_checkpoint_and_an_export(recorder_config, write_config, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("run", write_config(recorder_config(stop_at=3)), "--output", run_dir)
    assert result.exit_code == 0, result.output
    assert "stopped early, after step 3: enough" in result.output
    seen = events(run_dir)
    assert ("on_checkpoint", 3, 3, "step-000003") in seen and ("on_step", 4, 4) not in seen
    assert seen[-3:] == [("on_export", 3, "model.onnx"), ("on_samples", 3, 3, "step-000003.png"),
                         ("on_end", 3, "stopped")]  # the last step's picture, as an ended run has one
    assert (run_dir / "samples" / "step-000003.png").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000003"


def test_a_callbacks_state_comes_back_when_the_run_resumes(recorder_config, write_config, tmp_path):
    run_dir = tmp_path / "run"
    assert invoke("run", write_config(recorder_config()), "--output", run_dir).exit_code == 0
    (run_dir / "events.jsonl").unlink()
    result = invoke("--plugin", tmp_path / "recorder.py", "resume", run_dir, "--set", "train.steps=6")
    assert result.exit_code == 0, result.output
    assert events(run_dir)[0] == ("on_start", 4, {"count": 4})
    state = torch.load(run_dir / "checkpoints" / "step-000006" / "state.pt", weights_only=True)
    assert state["callbacks"]["recorder"] == {"count": 6}


def test_a_failing_callback_stops_the_run_naming_it_and_still_ends(recorder_config, write_config, tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("run", write_config(recorder_config(fail_in="on_evaluate")), "--output", run_dir)
    assert result.exit_code == 2
    assert "the callback 'recorder' failed in on_evaluate: ValueError: asked to fail" in result.output
    assert "Traceback" not in result.output
    assert events(run_dir)[-1] == ("on_end", 2, "failed")


def test_an_interrupt_reaches_the_callbacks_after_its_checkpoint(recorder_config, tmp_path):
    import os
    import signal

    loaded = parse_config(recorder_config(), _registry_with_recorder(tmp_path), source=tmp_path / "run.yaml")
    components = build_components(loaded, _registry_with_recorder(tmp_path))

    class Interrupter:
        def on_step(self, run, step):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    from aigc_kit.core.loop import Interrupted, Trainer

    components.callbacks.append(("interrupter", Interrupter()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(components, loaded.config, loaded.resolved(), run_dir, torch.device("cpu"))
    with pytest.raises(Interrupted):
        trainer.fit()
    assert events(run_dir)[-3:] == [("on_checkpoint", 1, 1, "step-000001"),
                                    ("on_interrupt", 1, 1, int(signal.SIGINT)), ("on_end", 1, "interrupted")]


def _registry_with_recorder(folder):
    from aigc_kit.testing import isolated_registry

    registry = isolated_registry()
    registry.load_local(str(folder / "recorder.py"))
    return registry


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "recorderr"}, "callbacks[0].name: unknown callback 'recorderr'"),
    ({"name": "recorder", "stop_after": 3}, "callbacks[0].stop_after"),
])
def test_a_bad_callback_entry_names_its_field(recorder_config, write_config, tmp_path, entry, message):
    config = recorder_config()
    config["callbacks"] = [entry]
    result = invoke("validate", write_config(config))
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_callback_listed_twice_is_refused(recorder_config, write_config):
    config = recorder_config()
    config["callbacks"] = [{"name": "recorder"}, {"name": "recorder"}]
    result = invoke("validate", write_config(config))
    assert result.exit_code == 2 and "the callback 'recorder' is listed twice" in result.output


def test_a_misspelt_event_is_refused_with_the_events_it_could_be():
    class Misspelt:
        def on_stpe(self, run, step): ...

    with pytest.raises(UserError, match="on_stpe, which is no event") as raised:
        Callbacks([("misspelt", Misspelt())])
    assert "on_step" in str(raised.value)


def test_the_train_section_turns_the_built_in_callbacks_on_in_order(builtin_registry):
    train = {**tiny_config()["train"], "progress": True, "tensorboard": True, "eval_every": 2,
             "eval": {"metrics": [{"name": "fid"}], "best": "fid/fid"}}
    loaded = parse_config(tiny_config(train=train), builtin_registry)
    names = [name for name, _ in build_components(loaded, builtin_registry, model_on_meta=True).callbacks]
    assert names == ["metrics-file", "progress", "tensorboard", "sample-grid", "evaluation", "best-checkpoint"]
    quiet = parse_config(tiny_config(), builtin_registry)
    assert [name for name, _ in build_components(quiet, builtin_registry, model_on_meta=True).callbacks] == [
        "metrics-file", "sample-grid"]


def test_a_built_in_callback_the_list_names_runs_once_where_the_list_puts_it(builtin_registry):
    config = tiny_config(callbacks=[{"name": "sample-grid"}])
    config["train"]["progress"] = True
    loaded = parse_config(config, builtin_registry)
    names = [name for name, _ in build_components(loaded, builtin_registry, model_on_meta=True).callbacks]
    assert names == ["metrics-file", "progress", "sample-grid"]


class Blocked(Tracker):
    """A tracker whose every call waits until the test lets it go: a server that hangs."""

    name = "blocked"

    def __init__(self, options, gate):
        super().__init__(options)
        self.gate = gate
        self.calls = 0

    def _open(self, run, previous):
        self.opened = True
        self.gate.wait(20)  # a tracker that held training up would fail the test after this, not hang it

    def log_metrics(self, step, values, timestamp):
        self.calls += 1
        self.gate.wait(20)  # a tracker that held training up would fail the test after this, not hang it

    def log_picture(self, step, path): ...
    def log_export(self, path): ...
    def finish(self, outcome): ...


def test_a_hanging_tracker_never_holds_training_and_warns_once(builtin_registry, tmp_path):
    from aigc_kit.core.loop import Trainer
    from aigc_kit.plugins.callbacks.options import TrackerOptions

    config = tiny_config()
    config["train"].update(steps=12, log_every=1)
    loaded = parse_config(config, builtin_registry)
    components = build_components(loaded, builtin_registry)
    gate = threading.Event()
    tracker = Blocked(TrackerOptions(queue=4, flush_seconds=0.2), gate)
    components.callbacks.append(("blocked", tracker))
    trainer = Trainer(components, loaded.config, loaded.resolved(), tmp_path, torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit()
    gate.set()
    assert result.steps == 12 and tracker.calls == 0  # trained to the end while the tracker's first call hung
    messages = [str(warning.message) for warning in caught if "blocked tracker" in str(warning.message)]
    assert len([m for m in messages if "dropping the oldest" in m]) == 1  # 12 logs, a queue of 4: told once
    assert len([m for m in messages if "did not take the last" in m]) == 1


def test_a_failing_tracker_call_warns_once_and_the_calls_after_it_are_tried():
    worker = Worker("flaky", limit=100)
    done = []

    def fail():
        raise OSError(28, "No space left on device")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            worker.submit(fail)
        worker.submit(lambda: done.append(1))
        worker.close(10)
    failures = [str(w.message) for w in caught if "flaky tracker failed" in str(w.message)]
    assert len(failures) == 1 and "No space left on device" in failures[0]
    assert done == [1]


def test_the_run_view_records_samples_and_evaluations_it_announces(tmp_path):
    heard = []

    class Listener:
        def on_samples(self, run, step, path):
            heard.append(("samples", step, path))

        def on_evaluate(self, run, step, values):
            heard.append(("evaluate", step, values))

    callbacks = Callbacks([("listener", Listener())])
    run = Run(config={}, train=None, components=None, run_dir=tmp_path, device="cpu", place=None,
              callbacks=callbacks)
    run.emit("on_samples", 3, tmp_path / "a.png")
    run.emit("on_evaluate", 3, {"fid/fid": 1.0})
    assert run.samples == [tmp_path / "a.png"] and run.last_eval == {"fid/fid": 1.0}
    assert heard == [("samples", 3, tmp_path / "a.png"), ("evaluate", 3, {"fid/fid": 1.0})]


@pytest.mark.parametrize(("tracker", "extra"), [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_tracker_without_its_package_is_a_user_error_before_training(write_config, tmp_path, monkeypatch,
                                                                      tracker, extra):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == tracker else found(name, *rest))
    result = invoke("validate", write_config(tiny_config(callbacks=[{"name": tracker}])))
    assert result.exit_code == 2
    assert f"the {tracker} callback needs the {tracker} package" in result.output
    assert f"pip install 'aigc-kit[{extra}]'" in result.output
