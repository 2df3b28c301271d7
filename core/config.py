"""The run configuration: a YAML file, read with a bounded ``yaml.SafeLoader`` and validated by pydantic.

A run config has the sections ``plugins``, ``seed``, ``device``, ``data``,
``model``, ``loss``, ``sampler``, ``train``, ``output``, ``export`` and ``callbacks``.
The component sections (``data``, ``model``, ``loss``, ``sampler``) hold a
``name`` and that component's own options, which are checked against the
options model of the plugin that offers it. Unknown keys are errors
everywhere. Every problem is reported as a :class:`~aigc_kit.core.errors.UserError`
naming the file and the dotted field.

This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import safe_yaml
from .errors import UserError, from_validation_error
from .plugin_api import Options
from .registry import Registry

COMPONENT_SECTIONS = {"data": "dataset", "model": "model", "loss": "loss", "sampler": "sampler"}
"""Config section -> the component kind it names."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an infinite learning rate validates nothing


class ComponentSection(BaseModel):
    """A component by ``name`` (bare, or ``plugin:name``), followed by that component's options."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="The component's name, as listed by `aigc-kit plugins`.")

    def plugin_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(_Strict):
    """Overrides of a phase's optimizer; unset fields keep the loss's proposal."""

    name: Literal["adam", "adamw", "rmsprop", "sgd"] | None = Field(None, description="Optimizer.")
    lr: float | None = Field(None, gt=0, description="Learning rate.")
    betas: tuple[float, float] | None = Field(None, description="Adam's (beta1, beta2).")
    weight_decay: float | None = Field(None, ge=0, description="Weight decay.")
    momentum: float | None = Field(None, ge=0, description="Momentum (rmsprop, sgd).")


class EmaConfig(_Strict):
    """Exponential moving average of the sampling network's weights, used for samples and export."""

    enabled: bool = Field(True, description="Keep an EMA copy of the sampling network.")
    decay: float = Field(0.999, gt=0, lt=1, description="The largest decay per step.")
    warmup: Literal["none", "ratio", "power"] = Field(
        "ratio",
        description="Ramp the decay up so early averages follow the weights: ratio, min(decay, (1 + step) / (10 + step)); "
        "power, min(decay, 1 - (1 + step) ** -power), common for diffusion; none.",
    )
    power: float = Field(0.75, gt=0, description="The exponent of the power warm-up (3/4 reaches 0.999 near 10k steps).")

    @field_validator("warmup", mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        # Earlier configs said warmup: true / false.
        return {True: "ratio", False: "none"}.get(value, value) if isinstance(value, bool) else value


class EvalConfig(_Strict):
    """Metrics computed on generated samples during training, logged to metrics.jsonl."""

    samples: int = Field(2500, gt=0, le=10**6, description="Samples generated (from fixed noise) for each evaluation.")
    metrics: list[ComponentSection] = Field(
        default_factory=list, description="Metrics by name, each with its options, e.g. [{name: mode-coverage}]."
    )
    best: str | None = Field(
        None, description="Keep the checkpoint with the best value of this logged metric as checkpoints/best, "
                          "e.g. fid/fid (written at each evaluation that improves it, never pruned)."
    )
    best_mode: Literal["min", "max"] = Field("min", description="Whether lower (min) or higher (max) is better.")


class TrainConfig(_Strict):
    """How long and how to train, and how often to log, sample and checkpoint."""

    steps: int = Field(1000, gt=0, le=10**9, description="Training steps (one step runs every phase of the loss).")
    batch_size: int = Field(64, gt=0, le=65536, description="Samples per batch (per phase repeat), at most 65,536.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision. auto picks, once at the start: bf16 on CUDA devices that compute "
        "it natively (Ampere and later), else fp16; bf16 on CPUs with native bf16 (AVX-512 BF16 or AMX), else fp32; fp32 on MPS. The choice and "
        "its reason go to environment.json, and the resolved config keeps it, so a resume trains in the same one. "
        "fp16 uses one gradient scaler per phase and needs CUDA (or MPS)."
    )
    optimizers: dict[str, OptimizerConfig] = Field(
        default_factory=dict, description="Per-phase optimizer overrides, keyed by phase name."
    )
    ema: EmaConfig = Field(default_factory=EmaConfig, description="EMA of the sampling network.")
    grad_clip: float | None = Field(None, gt=0, description="Clip each phase's gradient norm to this value.")
    accumulate: int = Field(
        1, ge=1, le=4096, description="Gradient accumulation: each update averages this many batches' gradients "
        "(an effective batch of batch_size x accumulate x processes)."
    )
    lr_decay: Literal["none", "linear", "cosine"] = Field(
        "none", description="Decay every phase's learning rate to 0 over the run (linear: as WGAN-GP's CIFAR runs)."
    )
    log_every: int = Field(10, gt=0, le=10**9, description="Write metrics.jsonl every this many steps.")
    sample_every: int = Field(500, gt=0, le=10**9, description="Write a sample picture every this many steps.")
    sample_count: int = Field(64, gt=0, le=10000, description="Samples in each picture (from fixed noise).")
    checkpoint_every: int = Field(1000, gt=0, le=10**9, description="Write a checkpoint every this many steps.")
    eval_every: int | None = Field(None, gt=0, le=10**9, description="Compute the eval metrics every this many steps (and at the end).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What to evaluate.")
    keep_checkpoints: int = Field(3, ge=1, le=10**6, description="How many step checkpoints to keep.")
    channels_last: bool = Field(
        False, description="Keep image networks and batches in channels-last memory order (faster convolutions on "
        "recent GPUs with mixed precision, and for a DCGAN in fp32 on a CPU; measure: some networks get slower)."
    )
    compile: bool = Field(False, description="Compile the networks with torch.compile (a slower start, faster steps); "
                          "CUDA devices only: ignored on the CPU, with a warning (torch's CPU compiler gave NaN "
                          "losses there on AVX2 CPUs).")
    cudnn_benchmark: bool = Field(
        False, description="Let cuDNN time its convolution algorithms for the run's shapes (CUDA only)."
    )
    sync_batchnorm: bool = Field(
        False, description="With several processes, BatchNorm uses the statistics of the whole batch across them "
        "(torch's SyncBatchNorm on CUDA)."
    )
    process_timeout: float = Field(
        7200.0, gt=0, description="With several processes: seconds a process waits for the others before the job "
        "fails (NCCL's watchdog included). Process 0 evaluates and writes sample pictures while the others wait, "
        "so this must exceed the longest evaluation."
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss or gradient stops the run (the last checkpoint stays intact), or skips that "
        "update and counts it in metrics.jsonl as skipped_updates.",
    )
    data_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes.")
    progress: bool = Field(True, description="Show a progress bar.")
    tensorboard: bool = Field(
        False, description="Also log the metrics and sample pictures for TensorBoard, in RUN_DIR/tensorboard "
        "(needs the tensorboard extra: pip install 'aigc-kit[tensorboard]')."
    )


class OutputConfig(_Strict):
    """Where the run directory goes: ``dir/name``."""

    dir: str = Field("runs", description="The folder holding run directories (relative to the working directory).")
    name: str | None = Field(None, description="The run's name; defaults to the config file's name.")
    overwrite: bool = Field(False, description="Allow writing into a run directory that already has checkpoints.")


class ExportSection(BaseModel):
    """Export the trained sampling network at the end of the run; other keys are the exporter's options."""

    model_config = ConfigDict(extra="allow")
    format: str = Field("onnx", description="The exporter's name.")
    file: str = Field("model.onnx", description="The file name, inside the run directory (to write elsewhere, "
                                                "use aigc-kit export RUN_DIR --out FILE).")

    @field_validator("file")
    @classmethod
    def _inside_the_run(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not path.name or value.endswith(("/", "\\")):
            raise ValueError("expected a file name inside the run directory (no absolute path, no ..); "
                             "to write elsewhere, use aigc-kit export RUN_DIR --out FILE")
        return value

    def plugin_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(_Strict):
    """A whole run: which components, how to train them, where to write and what to export."""

    plugins: list[str] = Field(
        default_factory=list, description="Local plugins: .py files (relative to this file) or module names."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds Python, NumPy and torch; the data and noise follow "
                                                         "from it (0 to 2**32 - 1).")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    data: ComponentSection = Field(description="The dataset.")
    model: ComponentSection = Field(description="The model (its networks).")
    loss: ComponentSection = Field(description="The loss and its phases.")
    sampler: ComponentSection = Field(description="The sampler: noise prior and noise -> sample.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="The run directory.")
    export: ExportSection | None = Field(None, description="Export at the end of the run (omit for none).")
    callbacks: list[ComponentSection] = Field(
        default_factory=list, description="Callbacks by name, each with its options, called on the run's events "
        "after the built-in ones, e.g. [{name: mlflow, experiment: shapes}] (docs/hooks.md)."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value


@dataclass
class LoadedConfig:
    """A validated run config with its components' validated options."""

    config: RunConfig
    source: Path | None
    options: dict[str, Options]
    """Validated options per component section (``data``, ``model``, ``loss``, ``sampler``, ``export``)."""
    metric_options: list[Options]
    """Validated options of each metric in ``train.eval.metrics``."""
    callback_options: list[Options] = field(default_factory=list)
    """Validated options of each entry of ``callbacks``."""
    plugin_references: list[str] = field(default_factory=list)
    """``plugins``, with files as absolute paths (taken when the config was read: a plugin may change directory)."""

    def resolved(self) -> dict[str, Any]:
        """The config as plain data with every default filled in (written to the run directory)."""
        data = self.config.model_dump(mode="json")
        # Plugin files are recorded by absolute path so that a checkpoint's config loads from anywhere.
        data["plugins"] = list(self.plugin_references)
        for section, options in self.options.items():
            data[section].update(options.model_dump(mode="json"))
        for metric, options in zip(data["train"]["eval"]["metrics"], self.metric_options, strict=True):
            metric.update(options.model_dump(mode="json"))
        for callback, options in zip(data["callbacks"], self.callback_options, strict=True):
            callback.update(options.model_dump(mode="json"))
        return data


def fingerprint(resolved: dict[str, Any]) -> str:
    """A short hash of a resolved config, stored in checkpoints to tell configs apart."""
    text = json.dumps(resolved, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file safely and within bounds (:mod:`.safe_yaml`); a missing file or bad YAML is a UserError."""
    return safe_yaml.read(path)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set dotted.key=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1, 2]``)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise UserError(
                "an override must look like dotted.key=value",
                field="--set",
                given=override,
                hint="for example --set train.steps=100",
            )
        try:
            value = safe_yaml.load(text, "--set")
        except UserError:
            value = text
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(
                    f"cannot set {key}: {'.'.join(parts[: depth + 1])} is not a section",
                    field="--set",
                    given=override,
                )
            node = child
        node[parts[-1]] = value
    return data


def parse_config(
    data: Any,
    registry: Registry,
    *,
    source: str | Path | None = None,
    overrides: list[str] | None = None,
    trusted: bool = True,
) -> LoadedConfig:
    """Validate config data, load the local plugins it names, and validate every component's options.

    ``trusted=False`` is for a config that came with data (a run directory's or a
    checkpoint's): it never loads a plugin. Each plugin it names must be loaded
    already (installed, or named by the user with ``--plugin``), or it is refused.
    """
    file = str(source) if source is not None else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(
            "expected a mapping of sections (data, model, loss, sampler, train, ...)",
            file=file,
            given=data,
            hint="see examples/dcgan-shapes.yaml",
        )
    data = apply_overrides(json.loads(json.dumps(data, default=str)), overrides or [])
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, file=file, model=RunConfig) from None
    base_dir = Path(source).parent if source is not None else Path.cwd()
    plugin_references = [str((base_dir / ref).resolve()) if ref.endswith(".py") or "/" in ref else ref
                         for ref in config.plugins]
    for index, reference in enumerate(config.plugins):
        if not trusted:
            if not registry.already_loaded(reference):
                raise UserError(
                    f"this config names the plugin {reference!r}, and a config that came with a run or a checkpoint "
                    "never runs code",
                    file=file, field=f"plugins[{index}]",
                    hint=f"if you trust it, load it yourself: aigc-kit --plugin {plugin_references[index]} COMMAND ...",
                )
            continue
        try:
            registry.load_local(reference, base_dir=base_dir)
        except UserError as error:
            error.field = error.field or f"plugins[{index}]"
            if file:
                error.with_file(file)
            raise
    options: dict[str, Options] = {}
    sections = dict(COMPONENT_SECTIONS)
    if config.export is not None:
        sections["export"] = "exporter"
    for section, kind in sections.items():
        part = getattr(config, section)
        name, name_key = (part.format, "format") if section == "export" else (part.name, "name")
        options[section] = _component_options(registry, kind, name, part.plugin_options(), section, name_key, file)
    metric_options = _listed_options(registry, "metric", config.train.eval.metrics, "train.eval.metrics", file,
                                     "each metric's values are logged under its name: list it once")
    callback_options = _listed_options(registry, "callback", config.callbacks, "callbacks", file,
                                       "a callback runs once per event: list it once")
    seen = {metric.name for metric in config.train.eval.metrics}
    best = config.train.eval.best
    if best is not None and best.partition("/")[0] not in seen:
        raise UserError("train.eval.best names a value of a metric that is not evaluated", field="train.eval.best",
                        file=file, given=best, expected="METRIC/VALUE of a metric in train.eval.metrics, e.g. fid/fid",
                        hint="add the metric to train.eval.metrics" if seen else "list metrics in train.eval.metrics")
    return LoadedConfig(config=config, source=Path(source) if source is not None else None, options=options,
                        metric_options=metric_options, callback_options=callback_options,
                        plugin_references=plugin_references)


def _listed_options(registry: Registry, kind: str, sections: list[ComponentSection], field: str,
                    file: str | None, once: str) -> list[Options]:
    """Validate each listed component's options (``train.eval.metrics``, ``callbacks``), each name once."""
    validated = []
    seen: set[str] = set()
    for index, section in enumerate(sections):
        where = f"{field}[{index}]"
        if section.name in seen:
            raise UserError(f"the {kind} {section.name!r} is listed twice", field=f"{where}.name", file=file, hint=once)
        seen.add(section.name)
        validated.append(_component_options(registry, kind, section.name, section.plugin_options(), where, "name",
                                            file))
    return validated


def _component_options(registry: Registry, kind: str, name: str, values: dict[str, Any], field: str,
                       name_key: str, file: str | None) -> Options:
    """Validate one component's options; errors name ``field.name_key`` (unknown name) or the bad option."""
    try:
        registry.spec(kind, name)
    except UserError as error:
        error.field = f"{field}.{name_key}"
        if file:
            error.with_file(file)
        raise
    try:
        return registry.options(kind, name, values, field_prefix=field)
    except UserError as error:
        if file:
            error.with_file(file)
        raise


def load_config(path: str | Path, registry: Registry, overrides: list[str] | None = None, *,
                trusted: bool = True) -> LoadedConfig:
    """Read and validate a run config file (see :func:`parse_config`)."""
    return parse_config(read_yaml(path), registry, source=path, overrides=overrides, trusted=trusted)
