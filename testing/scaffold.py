"""``aigc-kit new-plugin``: write a pip-installable plugin package with a working example of each kind asked for.

The package it writes::

    NAME/
      pyproject.toml           the aigc_kit entry point, a requirement on this aigc-kit
      README.md                try it, test it, publish it
      example.yaml             a run that trains with the package's components
      src/MODULE/__init__.py   the hooks and options (cheap to import)
      src/MODULE/components.py the torch code, imported by the factories
      tests/test_MODULE.py     the conformance kit's checks, one test per component

The templates are in ``templates/`` beside this module.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from typing import Any

import yaml

from aigc_kit.core.compatibility import host_version
from aigc_kit.core.errors import UserError

SCAFFOLD_KINDS = ("model", "loss", "sampler", "dataset", "metric", "exporter", "callback")
"""The kinds ``new-plugin`` has an example of."""

TEMPLATES = Path(__file__).with_name("templates")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

# Component names per kind ($short is the plugin's short name).
_COMPONENT = {"model": "$short", "loss": "$short-ragan", "sampler": "$short-sphere", "dataset": "$short-stripes",
              "metric": "$short-brightness", "exporter": "$short-pt2", "callback": "$short-early-stopping"}
# What each kind's torch code imports, merged into one import block.
_IMPORTS = {
    "model": {"torch": [], "torch.nn": ["nn"], "aigc_kit.core.errors": ["UserError"],
              "aigc_kit.core.plugin_api": ["ModelBundle", "square_image_size"]},
    "loss": {"torch": [], "torch.nn.functional": ["F"],
             "aigc_kit.core.plugin_api": ["ModelBundle", "OptimizerSettings", "Phase", "training_noise"]},
    "sampler": {"math": [], "torch": [], "torch.nn": ["nn"]},
    "dataset": {"math": [], "torch": [], "aigc_kit.core.plugin_api": ["DatasetBundle", "DatasetInfo"]},
    "metric": {"torch": [], "aigc_kit.core.errors": ["UserError"]},
    "exporter": {"pathlib": ["Path"], "torch": [], "torch.nn": ["nn"], "aigc_kit.core.errors": ["ValidationFailed"]},
    "callback": {"warnings": []},
}
# How each kind's conformance test calls the kit (small networks keep the tests at seconds).
_CHECKS = {
    "model": 'aigc_kit.check_model(registry, "{name}", resolutions=(16, 32), channels=(1, 3), options={{"width": 8}})\n'
             '    # class-conditional, as on labelled data: the label must change the samples and the critic\'s scores\n'
             '    aigc_kit.check_model(registry, "{name}", resolutions=(16,), channels=(3,), options={{"width": 8}}, '
             'classes=3)',
    "loss": 'aigc_kit.check_loss(registry, "{name}", model_options={{"width": 8}})\n'
            '    aigc_kit.check_loss(registry, "{name}", model_options={{"width": 8}}, classes=3)',
    "sampler": 'aigc_kit.check_sampler(registry, "{name}", model_options={{"width": 8}})\n'
               '    aigc_kit.check_sampler(registry, "{name}", model_options={{"width": 8}}, classes=3)',
    "dataset": 'aigc_kit.check_dataset(registry, "{name}", options={{"size": 8}})',
    "metric": 'aigc_kit.check_metric(registry, "{name}")\n'
              '    aigc_kit.check_metric(registry, "{name}", data_options={{"resolution": 16, "size": 64, '
              '"labels": True}})',
    "exporter": 'aigc_kit.check_exporter(registry, "{name}", filename="model.pt2", model_options={{"width": 8}})',
    "callback": 'events = aigc_kit.check_callback(registry, "{name}", options={{"monitor": "fid/fid", "patience": 1}})\n'
                '    assert ("on_evaluate", 2) in events',
}


def new_plugin(name: str, directory: str | Path | None = None, kinds: tuple[str, ...] = ("model",)) -> Path:
    """Write the package for plugin ``name`` into ``directory`` (default ``./name``); return the directory.

    ``name`` is the distribution's name (``aigc-kit-tiny`` or ``tiny``); the module is
    its underscored form and components are named after it without an ``aigc-kit-`` prefix.
    Refuses to write into a folder that is not empty.
    """
    if not _NAME.match(name):
        raise UserError("a plugin name is lower-case letters and digits, words joined by '-'", field="NAME",
                        given=name, hint="for example: aigc-kit-tiny")
    unknown = [kind for kind in kinds if kind not in SCAFFOLD_KINDS]
    if unknown or not kinds:
        raise UserError("unknown component kind", field="--kind", given=", ".join(unknown) or "nothing",
                        expected=", ".join(SCAFFOLD_KINDS))
    kinds = tuple(kind for kind in SCAFFOLD_KINDS if kind in kinds)  # one order, whatever the command line's
    target = Path(directory) if directory is not None else Path(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError("the folder exists and is not empty; new-plugin writes only into a new or empty folder",
                        file=str(target), hint="pick another --dir")
    short = name.removeprefix("aigc-kit-")
    module = name.replace("-", "_")
    words = {"distribution": name, "module": module, "short": short,
             "Short": "".join(part.capitalize() for part in short.split("-")),
             "kinds": ", ".join(kinds), "host_version": _minor(host_version()),
             "typing_import": "from typing import Literal\n\n" if {"model", "callback"} & set(kinds) else "",
             "context_import": "Context, " if {"model", "metric"} & set(kinds) else ""}
    names = {kind: Template(_COMPONENT[kind]).substitute(words) for kind in kinds}
    words["component_list"] = ", ".join(f"{kind} `{names[kind]}`" for kind in kinds)

    files = {
        "pyproject.toml": _fill("pyproject.toml", words),
        "README.md": _fill("README.md", words),
        "example.yaml": _example_config(names, words),
        f"src/{module}/__init__.py": _fill("header.hooks.py", words)
        + "".join(_fill(f"{kind}.hooks.py", words) for kind in kinds),
        f"src/{module}/components.py": _fill("header.components.py", words) + "\n" + _imports(kinds)
        + "".join(_fill(f"{kind}.components.py", words) for kind in kinds),
        f"tests/test_{module}.py": _tests(module, names),
    }
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target


def _fill(template: str, words: dict[str, str]) -> str:
    return Template((TEMPLATES / f"{template}.tmpl").read_text()).substitute(words)


def _minor(version: str) -> str:
    """``0.1.0`` -> ``0.1``: a plugin written now needs at least this minor release."""
    return ".".join(version.split(".")[:2])


def _imports(kinds: tuple[str, ...]) -> str:
    """The chosen kinds' imports, sorted as isort does: the standard library, then torch and aigc-kit together."""
    wanted: dict[str, set[str]] = {}
    for kind in kinds:
        for module, names in _IMPORTS[kind].items():
            wanted.setdefault(module, set()).update(names)
    groups: list[list[str]] = [[], []]
    for module in sorted(wanted):
        names = sorted(wanted[module])
        group = groups[1] if module.startswith(("torch", "aigc_kit")) else groups[0]
        if module == "torch.nn.functional":
            group.append("import torch.nn.functional as F")
        elif module == "torch.nn":
            group.append("from torch import nn")
        elif not names:
            group.append(f"import {module}")
        else:
            line = f"from {module} import {', '.join(names)}"
            wrapped = f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"
            group.append(line if len(line) <= 100 else wrapped)
    return "\n\n".join("\n".join(sorted(group, key=lambda line: (line.startswith("from"), line)))
                       for group in groups if group) + "\n"


def _example_config(names: dict[str, str], words: dict[str, str]) -> str:
    """A short run with the package's components where it has them, the built-ins elsewhere."""
    resolution = 16
    data: dict[str, Any] = ({"name": names["dataset"], "resolution": resolution, "size": 512} if "dataset" in names
                            else {"name": "shapes", "resolution": resolution, "size": 512, "backgrounds": "black"})
    model: dict[str, Any] = ({"name": names["model"], "latent_dim": 32, "width": 16} if "model" in names
                             else {"name": "dcgan", "latent_dim": 32, "width": 16})
    config = {
        "seed": 0,
        "device": "auto",
        "data": data,
        "model": model,
        "loss": {"name": names.get("loss", "gan-bce")},
        "sampler": {"name": names.get("sampler", "normal")},
        "train": {"steps": 200, "batch_size": 32, "log_every": 50, "sample_every": 100, "sample_count": 16,
                  "checkpoint_every": 100},
        "export": {"format": "onnx", "file": "model.onnx"},
    }
    if "metric" in names:
        config["train"].update(eval_every=100, eval={"samples": 256, "metrics": [{"name": names["metric"]}]})
    if "callback" in names:
        if "metric" not in names:
            config["train"].update(eval_every=50, eval={"samples": 256, "metrics": [{"name": "fid",
                                                                                      "real_samples": 512}]})
        config["callbacks"] = [{"name": names["callback"], "monitor": "fid/fid", "patience": 2}]
    header = (f"# A short run with {words['distribution']}'s components: aigc-kit run example.yaml\n"
              "# (the package must be installed, so that aigc-kit finds its entry point).\n")
    if "exporter" in names:
        header += f"# Its own exporter: aigc-kit export RUN_DIR --format {names['exporter']} --out model.pt2\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def _tests(module: str, names: dict[str, str]) -> str:
    """One conformance test per component, through the kit's ``aigc_kit`` fixture (no aigc-kit import needed)."""
    lines = [f'"""Conformance checks of {module}\'s components, with aigc-kit\'s kit (the `aigc_kit` fixture)."""',
             "", f"import {module}", ""]
    for kind, name in names.items():
        lines += ["", f"def test_the_{kind}_keeps_its_contract(aigc_kit):",
                  f"    registry = aigc_kit.registry({module})",
                  f"    {_CHECKS[kind].format(name=name)}", ""]
    return "\n".join(lines)
