"""Hostile and careless input, case by case: each must exit 2 with one message and change no file.

tests/test_hostile.py runs every case; ``python -m tests.hostile > docs/errors.md`` writes the table
of what each case makes aigc-kit say, which a test keeps current.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from aigc_kit.cli import cli

TINY = {
    "seed": 0, "device": "cpu",
    "data": {"name": "shapes", "resolution": 16, "channels": 3, "size": 64},
    "model": {"name": "dcgan", "latent_dim": 8, "width": 8},
    "loss": {"name": "gan-bce"}, "sampler": {"name": "normal"},
    "train": {"steps": 4, "batch_size": 8, "precision": "fp32", "log_every": 2, "sample_every": 2,
              "sample_count": 4, "checkpoint_every": 2, "progress": False},
}
MARKER_PLUGIN = textwrap.dedent("""
    from pathlib import Path
    Path(__file__).with_name("MARKER").write_text("this plugin ran")  # a plugin that came with data must not run
""")


@dataclass(frozen=True)
class Case:
    """One thing a user (or an attacker) does, and a fragment of what aigc-kit must answer."""

    name: str
    what: str
    prepare: Callable[[Path, Path], list[str]]
    """(the case's own empty folder, the shared base) -> the command's arguments, run in the case's folder."""
    expect: str
    status: int = 2


@dataclass
class Outcome:
    result: Result
    changed: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return self.result.output.strip()


def build_base(folder: Path) -> Path:
    """A trained run (checkpoints at steps 2 and 4), its ONNX export and its config, shared by the cases."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text(yaml.safe_dump(TINY))
    runner = CliRunner()
    for args in (["run", str(folder / "run.yaml"), "--output", str(folder / "run")],
                 ["export", str(folder / "run"), "--out", str(folder / "model.onnx")]):
        result = runner.invoke(cli, args)
        if result.exit_code != 0:
            raise RuntimeError(f"could not build the hostile cases' base: {result.output}")
    return folder


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (links included, not followed) with a hash of its bytes."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                found[str(path)] = "link to " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "folder"
    return found


def run_case(case: Case, folder: Path, base: Path) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(folder)
    try:
        args = case.prepare(folder, base)
        before = snapshot(folder, base)
        result = CliRunner().invoke(cli, args, prog_name="aigc-kit")
        after = snapshot(folder, base)
    finally:
        os.chdir(here)
    changed = sorted(set(before.items()) ^ set(after.items()))
    return Outcome(result, [name for name, _ in changed])


def table_row(case: Case, outcome: Outcome, base: Path, folder: Path) -> str:
    lines = outcome.message.splitlines()
    # click's own usage errors put their message last, after the usage lines
    first = next((line for line in lines if line.startswith("Error: ")), lines[0] if lines else "")
    first = re.sub(r"pid \d+ on \S+\)", "pid PID on HOST)", first)
    for path, name in ((str(folder), "."), (str(base), "BASE")):
        first = first.replace(path + "/", "" if name == "." else name + "/").replace(path, name)
    first = first.removeprefix("error: ").replace("|", "\\|")
    return f"| {case.name} | {case.what} | {first} | {outcome.result.exit_code} |"


# -- how the cases prepare -----------------------------------------------------------------------------------------

def copy_run(folder: Path, base: Path, name: str = "run") -> Path:
    shutil.copytree(base / "run", folder / name, symlinks=True)
    return folder / name


def edit_yaml(path: Path, change: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def config_with(folder: Path, change: Callable[[dict], None], text: str | None = None) -> list[str]:
    path = folder / "run.yaml"
    if text is not None:
        path.write_text(text)
    else:
        data = json.loads(json.dumps(TINY))
        change(data)
        path.write_text(yaml.safe_dump(data))
    return ["validate", "run.yaml"]


def checkpoint_naming_a_plugin(folder: Path, base: Path) -> Path:
    checkpoint = folder / "downloaded"
    shutil.copytree(base / "run" / "checkpoints" / "step-000004", checkpoint)
    (checkpoint / "helper.py").write_text(MARKER_PLUGIN)
    edit_yaml(checkpoint / "config.yaml", lambda data: data.update(plugins=["helper.py"]))
    return checkpoint


def run_naming_a_plugin(folder: Path, base: Path) -> list[str]:
    run = copy_run(folder, base)
    (run / "helper.py").write_text(MARKER_PLUGIN)
    edit_yaml(run / "config.yaml", lambda data: data.update(plugins=["helper.py"]))
    return ["resume", "run", "--set", "train.steps=6"]


def latest_says(text: bytes | str, link: bool = False) -> Callable[[Path, Path], list[str]]:
    def prepare(folder: Path, base: Path) -> list[str]:
        run = copy_run(folder, base)
        copy_run(folder, base, "other")
        pointer = run / "checkpoints" / "latest"
        if link:
            (run / "checkpoints" / "step-000009").symlink_to(folder / "other" / "checkpoints" / "step-000002")
        content = text.replace("OTHER", str(folder / "other")) if isinstance(text, str) else text
        pointer.write_bytes(content.encode() if isinstance(content, str) else content)
        return ["export", "run", "--out", "m.onnx"]

    return prepare


def overwrite_with_foreign_files(folder: Path, base: Path) -> list[str]:
    run = copy_run(folder, base)
    (run / "samples" / "holiday.jpg").write_bytes(b"a photo the user keeps here")
    (folder / "run.yaml").write_text(yaml.safe_dump(TINY))
    return ["run", "run.yaml", "--output", "run", "--set", "output.overwrite=true"]


def locked_run(folder: Path, base: Path) -> list[str]:
    """A run another process is writing: a child holds the lock for a minute (killed at the end of the case)."""
    copy_run(folder, base)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from aigc_kit.core.rundir import hold
        with hold(Path({str(folder / 'run')!r})):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    HOLDERS.append(holder)
    return ["resume", "run", "--set", "train.steps=6"]


HOLDERS: list[subprocess.Popen] = []


def release_holders() -> None:
    while HOLDERS:
        holder = HOLDERS.pop()
        holder.kill()
        holder.wait()


def onnx_metadata(change: Callable[[dict], None], command: str = "generate") -> Callable[[Path, Path], list[str]]:
    def prepare(folder: Path, base: Path) -> list[str]:
        import onnx

        model = onnx.load_model(str(base / "model.onnx"))
        properties = {entry.key: entry.value for entry in model.metadata_props}
        change(properties)
        del model.metadata_props[:]
        for key, value in properties.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(model, str(folder / "m.onnx"))
        return ["generate", "m.onnx", "--out", "g.png"] if command == "generate" else ["inspect", "m.onnx"]

    return prepare


def spec_change(key: str, change: Callable[[list], None]) -> Callable[[dict], None]:
    def apply(properties: dict) -> None:
        value = json.loads(properties[f"aigc_kit.{key}"])
        change(value)
        properties[f"aigc_kit.{key}"] = json.dumps(value)

    return apply


def damaged_checkpoint(damage: Callable[[Path], None], command: str = "resume") -> Callable[[Path, Path], list[str]]:
    def prepare(folder: Path, base: Path) -> list[str]:
        run = copy_run(folder, base)
        damage(run / "checkpoints" / "step-000004")
        if command == "resume":
            return ["resume", "run", "--set", "train.steps=6"]
        return ["export", "run", "--out", "m.onnx"]

    return prepare


def nan_weights(checkpoint: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "weights.safetensors")
    key = min(tensors)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, checkpoint / "weights.safetensors")


def local_plugin(body: str) -> Callable[[Path, Path], list[str]]:
    def prepare(folder: Path, base: Path) -> list[str]:
        (folder / "mine.py").write_text(textwrap.dedent("""
            from aigc_kit.core.plugin_api import ComponentSpec, hookimpl

            @hookimpl
            def aigc_register_models():
                return [ComponentSpec("mine", build, "A model that is not one.")]
        """) + textwrap.dedent(body))
        config = json.loads(json.dumps(TINY))
        config["model"] = {"name": "mine"}
        (folder / "run.yaml").write_text(yaml.safe_dump(config))
        return ["--plugin", "mine.py", "validate", "run.yaml"]

    return prepare


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return change


def write_then(path: str, content: bytes | str, args: list[str]) -> Callable[[Path, Path], list[str]]:
    """A case that writes ``content`` to ``path`` (in the case's folder) and runs ``args``."""
    def prepare(folder: Path, base: Path) -> list[str]:
        target = folder / path
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        return [argument.replace("BASE", str(base)) for argument in args]

    return prepare


def config_then(change: Callable[[dict], None], args: list[str], file: str | None = None) -> Callable[[Path, Path],
                                                                                                      list[str]]:
    """A case with the tiny config changed by ``change`` (and, if given, a plain file named ``file``)."""
    def prepare(folder: Path, base: Path) -> list[str]:
        if file is not None:
            (folder / file).write_text("a file, not a folder")
        config_with(folder, change)
        return args

    return prepare


def _bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for index in range(1, 9):
        lines.append(f"{chr(97 + index)}: &{chr(97 + index)} [{', '.join(['*' + chr(96 + index)] * 10)}]")
    return "\n".join(lines) + "\n"


CASES = [
    # 1. A checkpoint or run folder never runs code
    Case("checkpoint-plugin-export", "export a downloaded checkpoint whose config.yaml names a plugin file beside it",
         lambda folder, base: ["export", str(checkpoint_naming_a_plugin(folder, base).name), "--out", "m.onnx"],
         "never runs code"),
    Case("checkpoint-plugin-eval", "evaluate that checkpoint",
         lambda folder, base: ["eval", str(checkpoint_naming_a_plugin(folder, base).name), "--metric", "fid", "-n",
                               "8"], "never runs code"),
    Case("run-plugin-resume", "resume a run folder whose config.yaml names a plugin file", run_naming_a_plugin,
         "never runs code"),
    Case("latest-absolute", "checkpoints/latest holds an absolute path to another run's checkpoint",
         latest_says("OTHER/checkpoints/step-000002\n"), "must name a step-NNNNNN folder beside it"),
    Case("latest-parent", "checkpoints/latest climbs out with ../", latest_says("../../other/checkpoints/step-000002"),
         "must name a step-NNNNNN folder beside it"),
    Case("latest-link", "checkpoints/latest names a step folder that is a link to another run",
         latest_says("step-000009", link=True), "leads outside"),
    Case("latest-not-utf8", "checkpoints/latest is not UTF-8", latest_says(b"\xff\xfe\x00step"),
         "not a checkpoint pointer"),
    # 2. Nothing outside what the user named is written or deleted
    Case("export-file-absolute", "export.file names a file outside the run directory",
         lambda folder, base: config_with(folder, _set("export", {"format": "onnx", "file": "/tmp/elsewhere.txt"})),
         "inside the run directory"),
    Case("export-file-parent", "export.file climbs out with ../",
         lambda folder, base: config_with(folder, _set("export", {"format": "onnx", "file": "../model.onnx"})),
         "inside the run directory"),
    Case("overwrite-foreign-files", "output.overwrite on a folder that also holds the user's own files",
         overwrite_with_foreign_files, "removes only what a run writes"),
    # 3. One run directory, one writer
    Case("run-directory-locked", "resume a run that another aigc-kit process is writing", locked_run,
         "another aigc-kit process is writing this run (pid"),
    # 4. Input that exhausts memory or the stack
    Case("yaml-alias-bomb", "a config of nested YAML aliases (a billion laughs)",
         lambda folder, base: config_with(folder, None, _bomb()), "once its aliases are expanded"),
    Case("yaml-deep", "a config nested 900 levels deep",
         lambda folder, base: config_with(folder, None, "x: " + "[" * 900 + "]" * 900 + "\n"), "nested deeper"),
    Case("yaml-duplicate-key", "a config that sets a key twice",
         lambda folder, base: config_with(folder, None, yaml.safe_dump(TINY) + "seed: 3\n"), "appears twice"),
    Case("yaml-huge", "a 2 MB config file",
         lambda folder, base: config_with(folder, None, "# " + "x" * (2 << 20) + "\n"), "at most 1,048,576"),
    Case("yaml-not-utf8", "a config that is not UTF-8 text",
         write_then("run.yaml", b"seed: \xff\n", ["validate", "run.yaml"]), "not UTF-8"),
    Case("batch-size-huge", "train.batch_size: 1e9",
         lambda folder, base: config_with(folder, _set("train.batch_size", 10**9)), "less than or equal to 65536"),
    Case("data-size-huge", "data.size: 1e12",
         lambda folder, base: config_with(folder, _set("data.size", 10**12)), "less than or equal to 100000000"),
    Case("width-huge", "model.width: 20000",
         lambda folder, base: config_with(folder, _set("model.width", 20000)), "less than or equal to 1024"),
    Case("unet-width-8", "a UNet of width 8 with the default 32 GroupNorm groups",
         lambda folder, base: config_with(folder, lambda data: data.update(
             model={"name": "unet", "width": 8}, loss={"name": "diffusion"}, sampler={"name": "ddim", "steps": 3})),
         "divide by norm_groups"),
    Case("pack-not-dividing-batch", "PacGAN packing of 3 with a batch of 8",
         lambda folder, base: config_with(folder, _set("model.pack", 3)), "does not divide into"),
    Case("dataset-smaller-than-batch", "a dataset of 4 images and a batch of 8",
         lambda folder, base: config_with(folder, _set("data.size", 4)), "fewer than one batch"),
    Case("seed-huge", "seed: 2**64", lambda folder, base: config_with(folder, _set("seed", 2**64)),
         "less than or equal to 4294967295"),
    Case("lr-infinite", "a learning rate of .inf",
         lambda folder, base: config_with(folder, _set("train.optimizers", {"generator": {"lr": float("inf")}})),
         "finite number"),
    Case("generate-grid-huge", "generate -n 1e12 into one grid picture",
         lambda folder, base: ["generate", str(base / "model.onnx"), "-n", str(10**12), "--out", "g.png"],
         "at most 10,000 images"),
    Case("generate-not-an-image", "generate --out g.txt",
         lambda folder, base: ["generate", str(base / "model.onnx"), "--out", "g.txt"], "needs an image file name"),
    Case("generate-under-a-file", "generate --out into a path under a file",
         write_then("file", "x", ["generate", "BASE/model.onnx", "--out", "file/g.png"]), "is a file, not a folder"),
    Case("generate-seed-negative", "generate --seed -1",
         lambda folder, base: ["generate", str(base / "model.onnx"), "--out", "g.png", "--seed", "-1"],
         "not in the range x>=0"),
    # 5. Files from elsewhere are checked against a schema
    Case("onnx-huge-input", "an ONNX file whose metadata declares an input of 10^11 values per sample",
         onnx_metadata(spec_change("inputs", lambda specs: specs[0].update(shape=["batch", 10**11]))),
         "fixed dimension must be from 1 to 65,536"),
    Case("onnx-bad-json", "an ONNX file whose inputs metadata is not JSON",
         onnx_metadata(lambda props: props.update({"aigc_kit.inputs": "{not json"})), "not valid JSON"),
    Case("onnx-no-inputs", "an ONNX file whose metadata lacks its inputs",
         onnx_metadata(lambda props: props.pop("aigc_kit.inputs")), "this field is required"),
    Case("onnx-uint8-without-layout", "an ONNX file whose metadata says uint8 pixels with no layout",
         onnx_metadata(spec_change("outputs", lambda specs: (specs[0].update(dtype="uint8"), specs[0].pop("layout")))),
         "needs layout NHWC"),
    Case("onnx-false-dtype", "an ONNX file whose metadata calls its float output uint8 pixels",
         onnx_metadata(spec_change("outputs", lambda specs: specs[0].update(dtype="uint8", layout="NHWC"))),
         "is not the graph's"),
    Case("onnx-flat-range", "an ONNX file whose output value range is [1, 1]",
         onnx_metadata(spec_change("outputs", lambda specs: specs[0].update(value_range=[1, 1]))), "low < high"),
    Case("onnx-wrong-input-name", "an ONNX file whose metadata names an input the graph does not have",
         onnx_metadata(spec_change("inputs", lambda specs: specs[0].update(name="noise"))),
         "does not describe"),
    Case("onnx-not-ours", "an ONNX file with no aigc-kit metadata",
         onnx_metadata(lambda props: props.clear()), "not exported by aigc-kit"),
    Case("onnx-not-onnx", "a file that is not ONNX at all",
         write_then("m.onnx", b"\x00garbage" * 64, ["inspect", "m.onnx"]), "not an ONNX model"),
    Case("state-empty", "resume from a checkpoint whose state.pt is empty",
         damaged_checkpoint(lambda checkpoint: (checkpoint / "state.pt").write_bytes(b"")),
         "cannot read the training state"),
    Case("state-missing", "resume from a checkpoint without state.pt",
         damaged_checkpoint(lambda checkpoint: (checkpoint / "state.pt").unlink()), "no training state to resume"),
    Case("checkpoint-config-not-yaml", "export a checkpoint whose config.yaml is not YAML",
         damaged_checkpoint(lambda checkpoint: (checkpoint / "config.yaml").write_text("model: [unclosed\n"),
                            "export"), "invalid YAML"),
    Case("checkpoint-config-binary", "export a checkpoint whose config.yaml is binary",
         damaged_checkpoint(lambda checkpoint: (checkpoint / "config.yaml").write_bytes(b"\x89PNG\xff\xfe"),
                            "export"), "not UTF-8"),
    Case("checkpoint-config-a-list", "export a checkpoint whose config.yaml is a list",
         damaged_checkpoint(lambda checkpoint: (checkpoint / "config.yaml").write_text("- a\n- b\n"), "export"),
         "expected the run's config"),
    Case("weights-nan", "export a checkpoint whose weights were overwritten with NaN",
         damaged_checkpoint(nan_weights, "export"), "NaN or infinite"),
    # 7. Disks and places
    Case("output-dir-is-a-file", "output.dir names a file",
         config_then(_set("output.dir", "runs"), ["run", "run.yaml"], file="runs"), "is a file, not a folder"),
    Case("output-under-a-file", "--output under a file",
         config_then(lambda data: None, ["run", "run.yaml", "--output", "file/run"], file="file"),
         "is a file, not a folder"),
    Case("output-not-writable", "--output in a place no one may write (/proc)",
         config_then(lambda data: None, ["run", "run.yaml", "--output", "/proc/aigc-kit-run"]),
         "cannot be written"),
    Case("export-out-under-a-file", "export --out into a path under a file",
         write_then("file", "x", ["export", "BASE/run", "--out", "file/m.onnx"]), "is a file, not a folder"),
    Case("export-out-a-folder", "export --out names a folder",
         lambda folder, base: ["export", str(base / "run"), "--out", "."], "is a directory"),
    Case("eval-out-under-a-file", "eval --out into a path under a file (refused before sampling)",
         write_then("file", "x", ["eval", "BASE/run", "--metric", "fid", "-n", "8", "--out", "file/e.json"]),
         "is a file, not a folder"),
    Case("report-out-not-writable", "report --out in a place no one may write (/proc)",
         lambda folder, base: ["report", str(base / "run"), "--out", "/proc/report.html"], "cannot be written"),
    # 8. Plugins
    Case("factory-wrong-type", "a plugin whose model factory returns a string",
         local_plugin("def build(options, data_shape=None):\n    return 'not a model'\n"),
         "returned str, not a ModelBundle"),
    Case("factory-raises", "a plugin whose model factory raises",
         local_plugin("def build(options, data_shape=None):\n    raise ValueError('widths must be even')\n"),
         "could not be built: ValueError: widths must be even"),
]


def main() -> None:
    """Print docs/errors.md: every case, what aigc-kit answers, the exit status (run from the repository)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aigc-kit-hostile-") as scratch:
        base = build_base(Path(scratch) / "base")
        rows = []
        try:
            for case in CASES:
                folder = Path(scratch) / case.name
                outcome = run_case(case, folder, base)
                rows.append(table_row(case, outcome, base, folder))
                release_holders()
        finally:
            release_holders()
    print("# What aigc-kit says to input it cannot use\n")
    print("Generated by `python -m tests.hostile > docs/errors.md` from the cases in `tests/hostile.py`;")
    print("`tests/test_hostile.py` runs each case, checks that it exits 2 with one message and no traceback and")
    print("that no file changed (the file trees are compared before and after), and that its row here is current.")
    print("Paths are shown relative to the case's folder; BASE is a trained run and its export.\n")
    print(f"{len(rows)} cases.\n")
    print("| case | what the user does | what aigc-kit says (first line) | exit |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    sys.exit(main())
