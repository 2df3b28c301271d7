"""Hostile files, careless users and two processes at once: nothing runs, leaks or is lost.

The cases that must be refused with exit status 2 are in tests/hostile.py (and docs/errors.md);
the ones that must be handled (a damaged cache, a 16-bit image, a signal) are below.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from aigc_kit.cli import cli

from . import hostile

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return hostile.build_base(tmp_path_factory.mktemp("hostile") / "base")


@pytest.mark.parametrize("case", hostile.CASES, ids=lambda case: case.name)
def test_refused_with_one_message_and_no_file_changed(case, base, tmp_path):
    try:
        outcome = hostile.run_case(case, tmp_path / "case", base)
    finally:
        hostile.release_holders()
    message = outcome.message
    assert outcome.result.exit_code == case.status, message
    assert "Traceback" not in message and "internal error" not in message, message
    assert case.expect in message, message
    assert message.startswith(("error: ", "Usage: ")), message  # click's own usage errors for bad option values
    assert outcome.changed == [], f"changed: {outcome.changed}"
    assert not (tmp_path / "case" / "downloaded" / "MARKER").exists()  # no plugin that came with data ran
    assert hostile.table_row(case, outcome, base, tmp_path / "case") in DOCS.read_text(), (
        "docs/errors.md is out of date: python -m tests.hostile > docs/errors.md")


def test_the_table_lists_every_case_and_nothing_else():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [case.name for case in hostile.CASES]


# -- two processes at once ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_trains_and_a_dead_holder_blocks_nothing(
        tmp_path):
    config = json.loads(json.dumps(hostile.TINY))
    config["train"].update(steps=100000, checkpoint_every=50, log_every=50)
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    first = subprocess.Popen([sys.executable, "-m", "aigc_kit.cli", "run", "long.yaml", "--output", "run"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = CliRunner().invoke(cli, ["run", str(tmp_path / "long.yaml"), "--output", str(tmp_path / "run"),
                                          "--resume"])
        assert second.exit_code == 2 and f"(pid {first.pid} on " in second.output, second.output
    finally:
        first.kill()  # SIGKILL: no clean-up, the OS alone releases the lock
        first.wait()
    again = CliRunner().invoke(cli, ["run", str(tmp_path / "long.yaml"), "--output", str(tmp_path / "run"),
                                     "--resume", "--set", "train.steps=" + str(_latest(tmp_path / "run") + 2)])
    assert again.exit_code == 0, again.output


def _latest(run_dir: Path) -> int:
    return int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))


@pytest.mark.slow
def test_two_exports_to_one_file_at_once_both_succeed(base, tmp_path):
    command = [sys.executable, "-m", "aigc_kit.cli", "export", str(base / "run"), "--out", str(tmp_path / "m.onnx")]
    exports = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(export.wait(timeout=300), export.stderr.read()) for export in exports]
    assert [status for status, _ in results] == [0, 0], results
    assert [path.name for path in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file of either is left


@pytest.mark.slow
def test_an_export_stopped_by_sigterm_leaves_no_temporary_file(base, tmp_path):
    export = subprocess.Popen([sys.executable, "-m", "aigc_kit.cli", "export", str(base / "run"), "--out",
                               str(tmp_path / "m.onnx")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".m.onnx.*")) and export.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # until it writes its temporary file (then it validates for a while)
    export.send_signal(signal.SIGTERM)
    status = export.wait(timeout=120)
    if status == 0:
        pytest.skip("the export finished before the signal reached it (a very fast machine)")
    assert status == 143 and "terminated" in export.stderr.read()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_launcher_stopped_by_a_signal_stops_every_process_after_a_checkpoint(tmp_path):
    config = json.loads(json.dumps(hostile.TINY))
    config["train"].update(steps=100000, checkpoint_every=100000, log_every=10)
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    launcher = subprocess.Popen([sys.executable, "-m", "aigc_kit.cli", "run", "long.yaml", "--output", "run",
                                 "--nproc", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    launcher.send_signal(signal.SIGINT)
    _, errors = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, errors[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()  # each process finished its step and checkpointed
    assert errors.count("resume with: aigc-kit resume run") == 1 and "Traceback" not in errors
    time.sleep(0.5)
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "long.yaml" not in left  # no worker outlives the launcher


# -- damaged or foreign files that are handled ------------------------------------------------------------------

def test_a_truncated_feature_cache_is_computed_again_with_a_warning_naming_it(base, tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_KIT_CACHE", str(tmp_path / "cache"))

    def evaluate(out: str):
        return CliRunner().invoke(cli, ["eval", str(base / "run"), "--metric", "fid", "-n", "16", "--option",
                                        "fid.real_samples=32", "--out", str(tmp_path / out)])

    first = evaluate("first.json")
    assert first.exit_code == 0, first.output
    [cached] = list((tmp_path / "cache").rglob("*.safetensors"))
    cached.write_bytes(cached.read_bytes()[:100])
    second = evaluate("second.json")
    assert second.exit_code == 0, second.output
    assert f"warning: the cached real-data features in {cached} are damaged" in second.output
    scores = [json.loads((tmp_path / name).read_text()) for name in ("first.json", "second.json")]
    assert scores[0]["values"] == scores[1]["values"]  # the same features, computed again


def test_a_16_bit_greyscale_image_is_scaled_by_its_depth_not_clipped(builtin_registry, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "ramp.png")
    data = builtin_registry.create("dataset", "image-folder", root=str(folder), resolution=32, channels=1)
    pixels = data.dataset[0]
    assert pixels.min() == pytest.approx(-1.0, abs=0.01) and pixels.max() == pytest.approx(1.0, abs=0.01)
    assert pixels.mean() == pytest.approx(0.0, abs=0.02)  # the ramp's middle grey, not white
    assert (pixels > 0.99).float().mean() < 0.02


def test_an_image_over_pillows_pixel_limit_is_counted_with_the_skipped_files(builtin_registry, tmp_path,
                                                                            monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "fine.png")
    Image.new("RGB", (400, 400), "blue").save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400 * 400 // 3)  # 400x400 is then a decompression bomb
    with pytest.warns(UserWarning, match=r"1 unreadable image file\(s\) .* skipped, e.g. .*huge.png"):
        data = builtin_registry.create("dataset", "image-folder", root=str(folder), resolution=32)
    assert len(data.dataset) == 1


def test_the_report_escapes_what_metrics_jsonl_holds_and_shows_what_it_can(base, tmp_path):
    run = hostile.copy_run(tmp_path, base)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write(json.dumps({"step": "<script>document.title='PWNED'</script>", "x/y": 1}) + "\n")
        metrics.write(json.dumps({"step": 9, "<img src=x onerror=\"document.title='PWNED'\">/loss": 1.0}) + "\n")
        metrics.write("[1, 2, 3]\n{not json\n")
    (run / "environment.json").write_text("{broken")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = run / "report" / "report.html"
    text = page.read_text()
    assert "<script>" not in text and "<img src=x" not in text
    assert "&lt;img src=x onerror=" in text and "unreadable" in text  # shown as text, and what could not be read
    assert "warning: 3 line(s) of" in result.output and "is not JSON" in result.output
    if browser() is None:
        pytest.skip("no Chromium or Chrome installed (Debian: apt-get install chromium): the page was checked as text")
    dom = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert "<title>aigc-kit run report" in dom and "PWNED" not in dom.split("</title>")[0]  # no script ran


def browser() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def test_names_that_disable_plugins_are_compared_as_pip_compares_them(plugin_distribution, monkeypatch):
    from aigc_kit.core.registry import Registry

    plugin_distribution("aigc-kit-marker", "0.1", {"marker": "raise RuntimeError('imported')"})
    for spelling in ("aigc_kit_marker", "AIGC-KIT-MARKER", "aigc-kit.marker", "Marker"):
        monkeypatch.setenv("AIGC_KIT_DISABLE_PLUGINS", spelling)
        assert Registry(strict=True).records["marker"].status == "disabled", spelling
    monkeypatch.setenv("AIGC_KIT_DISABLE_PLUGINS", "aigc-kit-marker,no-such-plugin")
    with pytest.warns(UserWarning, match="no-such-plugin, which match no installed plugin"):
        Registry(strict=True)


@pytest.mark.parametrize("full", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
    "safetensors",
], ids=["oserror", "torch-save", "safetensors"])
def test_a_full_disk_in_any_of_its_forms_is_one_message_that_the_last_checkpoint_is_intact(full, tmp_path,
                                                                                           monkeypatch):
    from safetensors import SafetensorError

    from aigc_kit.core import checkpoint

    error = SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                            "left on device\" })") if full == "safetensors" else full
    calls = []
    writer = "save" if isinstance(full, RuntimeError) else "save_file"
    original = getattr(checkpoint.torch if writer == "save" else checkpoint, writer)

    def fill_the_disk_at_the_second_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return original(*args, **kwargs)

    if writer == "save":
        monkeypatch.setattr(checkpoint.torch, "save", fill_the_disk_at_the_second_checkpoint)
    else:
        monkeypatch.setattr(checkpoint, "save_file", fill_the_disk_at_the_second_checkpoint)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(hostile.TINY))
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no space left on the device" in result.output and "(step-000002) is intact" in result.output
    assert f"aigc-kit resume {tmp_path / 'run'}" in result.output
    assert _latest(tmp_path / "run") == 2 and not list((tmp_path / "run" / "checkpoints").glob(".step-*"))


def test_inspect_shows_control_characters_in_metadata_as_replacement_characters(base, tmp_path, monkeypatch):
    escape = "evil\x1b]0;pwned\x07\x1b[2J"  # would retitle the terminal window and clear the screen
    prepare = hostile.onnx_metadata(hostile.spec_change("inputs", lambda specs: specs[0].update(semantics=escape)),
                                    "inspect")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, prepare(tmp_path, base))
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "evil\ufffd]0;pwned" in result.output


def test_the_unwritable_check_creates_nothing(tmp_path):
    from aigc_kit.core.rundir import check_writable

    check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    assert os.access(tmp_path, os.W_OK)
