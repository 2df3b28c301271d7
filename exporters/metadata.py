"""The metadata an exported ONNX model carries (``metadata_props``), as one pydantic model.

The exporter writes it with :func:`properties`; the runtime, ``inspect`` and
``eval`` read it back with :func:`parse`, which checks every key against this
schema and bounds every size before anything is allocated: an ONNX file is a
file from elsewhere. This module imports neither torch nor onnx.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aigc_kit.core.errors import UserError, from_validation_error

PREFIX = "aigc_kit."
FORMAT_VERSION = "1"
MAX_DIM = 65_536
"""The largest fixed dimension of an input or output."""
MAX_SAMPLE_ELEMENTS = 1 << 24
"""The most values one sample of an input or output may hold (16M: a 4096 x 4096 RGB image)."""
MAX_STEPS = 10_000
MAX_CLASSES = 10_000
Name = Annotated[str, Field(min_length=1, max_length=200)]
JSON_KEYS = ("inputs", "outputs", "sampling", "sampler_options", "prior", "validation", "components", "data")
"""Keys whose values are JSON (the others are plain strings)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorSpec(_Strict):
    """One input or output of the graph: its name, shape (``batch`` and ``steps`` are symbolic), type and meaning."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_./:-]{0,127}$")
    shape: list[int | Literal["batch", "steps"]] = Field(max_length=8)
    dtype: Literal["float32", "float16", "int64", "uint8"]
    semantics: str = Field("", max_length=500)
    optional: bool | None = None
    default: Annotated[list[int], Field(max_length=MAX_STEPS)] | float | None = None
    """An optional input's default: a sampler's timesteps, a guidance scale."""
    classes: list[Name] | None = Field(None, min_length=2, max_length=MAX_CLASSES)
    """A ``label`` input's class names, in index order."""
    latent_size: list[int] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    channels: int | None = Field(None, ge=1, le=4)
    resolution: list[int] | None = None
    value_range: tuple[float, float] | None = None

    @field_validator("shape")
    @classmethod
    def _bounded(cls, shape: list[int | str]) -> list[int | str]:
        fixed = [dim for dim in shape if isinstance(dim, int)]
        if any(not 1 <= dim <= MAX_DIM for dim in fixed):
            raise ValueError(f"every fixed dimension must be from 1 to {MAX_DIM:,}")
        if math.prod(fixed) > MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"one sample would hold {math.prod(fixed):,} values (at most {MAX_SAMPLE_ELEMENTS:,})")
        return shape

    @field_validator("value_range")
    @classmethod
    def _increasing(cls, value_range: tuple[float, float] | None) -> tuple[float, float] | None:
        if value_range is not None and not value_range[0] < value_range[1]:
            raise ValueError("expected [low, high] with low < high")
        return value_range


class Prior(_Strict):
    """The noise a generator or sampler graph takes: ``normal`` (z ~ N(0, I), ``truncation``: redraw entries beyond
    it) or ``sphere`` (normal, rescaled to ``radius``, default sqrt of its size); a plugin may name its own."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    kind: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    truncation: float | None = Field(None, gt=0, le=100)
    radius: float | None = Field(None, gt=0, le=1e6)


class Sampling(_Strict):
    """How a sampler graph samples (empty for a generator)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # a plugin sampler may describe more
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    graph: Literal["loop", "unrolled"] | None = None
    timesteps: list[int] | None = Field(None, max_length=MAX_STEPS)
    fp32_steps: int | None = Field(None, ge=0, le=MAX_STEPS)


class ModelMetadata(_Strict):
    """Everything aigc-kit records in an exported model; see docs/export.md for each key."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # provenance a plugin exporter adds
    format_version: str = FORMAT_VERSION
    family: str = Field("generator", max_length=64)
    graph: Literal["generator", "denoiser", "sampler"]
    inputs: list[TensorSpec] = Field(min_length=1, max_length=8)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=4)
    sampling: Sampling = Field(default_factory=Sampling)
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    prior: Prior | None = None
    opset: str = Field("", max_length=8)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    validation: dict[str, Any] = Field(default_factory=dict)
    components: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _images_are_described(self) -> ModelMetadata:
        for output in self.outputs:
            if output.dtype == "uint8" and (output.layout != "NHWC" or output.value_range is None):
                raise ValueError(f"the uint8 output {output.name!r} needs layout NHWC and a value_range")
            if output.layout is not None and len(output.shape) != 4:
                raise ValueError(f"the image output {output.name!r} needs a 4-dimensional shape")
        names = [spec.name for spec in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("two inputs share a name")
        return self


def properties(metadata: dict[str, Any], provenance: dict[str, str]) -> dict[str, str]:
    """``metadata_props`` for an export: ``metadata`` and the run's ``provenance`` (already encoded), checked
    against the schema together, then encoded."""
    decoded = {key.removeprefix(PREFIX): json.loads(value) if key.removeprefix(PREFIX) in JSON_KEYS else value
               for key, value in provenance.items() if key.startswith(PREFIX)}
    checked = ModelMetadata.model_validate({**decoded, **metadata}).model_dump(mode="json", exclude_none=True)
    encoded = {f"{PREFIX}{key}": json.dumps(value) if key in JSON_KEYS else str(value)
               for key, value in checked.items()}
    others = {key: value for key, value in provenance.items() if not key.startswith(PREFIX)}
    return {**others, **encoded}


def parse(props: dict[str, str], path: str | Path = "") -> dict[str, Any]:
    """The ``aigc_kit.*`` metadata of a model file, decoded and checked; a :class:`UserError` naming the key if not."""
    file = str(path)
    if f"{PREFIX}graph" not in props:
        raise UserError("this ONNX file was not exported by aigc-kit (it has no aigc_kit metadata)", file=file,
                        hint="export it with: aigc-kit export RUN_DIR --out MODEL.onnx")
    decoded: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(PREFIX):
            continue
        name = key.removeprefix(PREFIX)
        if len(value) > 1 << 20:
            raise UserError("the metadata value is over 1 MiB", file=file, field=f"metadata {key}")
        if name in JSON_KEYS:
            try:
                decoded[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UserError(f"the metadata is not valid JSON: {exc.msg} at character {exc.pos}", file=file,
                                field=f"metadata {key}", hint="export the model again") from None
        else:
            decoded[name] = value
    try:
        checked = ModelMetadata.model_validate(decoded)
    except ValidationError as exc:
        error = from_validation_error(exc, prefix="metadata aigc_kit", file=file, model=ModelMetadata)
        error.hint = error.hint or "export the model again with this version of aigc-kit"
        raise error from None
    return checked.model_dump(mode="json", exclude_none=True)


def check_graph(metadata: dict[str, Any], graph_inputs: dict[str, tuple[str, int]],
                graph_outputs: dict[str, tuple[str, int]], path: str | Path = "") -> None:
    """Refuse metadata that describes inputs or outputs the graph does not have (``name -> (dtype, rank)``)."""
    file = str(path)
    described = {spec["name"]: spec for spec in metadata["inputs"]}
    for name, (dtype, rank) in graph_inputs.items():
        spec = described.get(name)
        if spec is None:
            raise UserError(f"the graph takes an input {name!r} that its metadata does not describe", file=file,
                            field="metadata aigc_kit.inputs", hint="export the model again")
        if (spec["dtype"], len(spec["shape"])) != (dtype, rank):
            raise UserError(f"the metadata describes input {name!r} as {spec['dtype']} of rank {len(spec['shape'])}, "
                            f"the graph takes {dtype} of rank {rank}", file=file, field="metadata aigc_kit.inputs")
    for name, spec in described.items():
        if name not in graph_inputs and not spec.get("optional"):
            raise UserError(f"the metadata describes an input {name!r} the graph does not take", file=file,
                            field="metadata aigc_kit.inputs", hint="export the model again")
    output = metadata["outputs"][0]
    actual = graph_outputs.get(output["name"])
    if actual is None or actual != (output["dtype"], len(output["shape"])):
        raise UserError(f"the metadata's output {output['name']!r} ({output['dtype']}, rank {len(output['shape'])}) "
                        f"is not the graph's ({', '.join(f'{n}: {t} rank {r}' for n, (t, r) in graph_outputs.items())})",
                        file=file, field="metadata aigc_kit.outputs", hint="export the model again")


def printable(text: Any) -> str:
    """``text`` with every control or format character (a terminal escape, say) replaced by U+FFFD."""
    return "".join(character if character.isprintable() else "\ufffd" for character in str(text))


def describe(info: dict[str, Any], path: str | Path) -> list[str]:
    """``aigc-kit inspect``'s lines for parsed metadata: what the model is, takes and returns, where it came from."""
    lines = [(f"{path}: {info.get('family')} model {info.get('model')!r}, {info.get('graph')} graph, "
              f"{info.get('precision')}, opset {info.get('opset')}, {info.get('bytes', 0):,} bytes"),
             f"  producer: {info.get('producer')}; config sha256 {str(info.get('config_sha256', '?'))[:16]}"]
    for direction in ("inputs", "outputs"):
        for spec in info.get(direction, []):
            shape = "x".join(str(dimension) for dimension in spec["shape"]) or "scalar"
            extra = f", range {spec['value_range']}, {spec.get('layout')}" if "value_range" in spec else ""
            if "classes" in spec:
                extra += "; classes " + ", ".join(spec["classes"][:20]) + (", ..." if len(spec["classes"]) > 20 else "")
            if isinstance(spec.get("default"), float):
                extra += f"; default {spec['default']:g}"
            lines.append(f"  {direction[:-1]} {spec['name']}: {spec['dtype']} {shape} - {spec.get('semantics', '')}"
                         f"{extra}")
    prior = info.get("prior")
    if prior:
        lines.append("  noise: " + prior["kind"] + "".join(f", {key} {value}" for key, value in prior.items()
                                                            if key != "kind"))
    if info.get("sampling"):
        lines.append("  sampling: " + ", ".join(f"{key} {value}" for key, value in info["sampling"].items()))
    for section, component in info.get("components", {}).items():
        if not isinstance(component, dict):
            continue
        where = component.get("distribution") or component.get("plugin")
        version = f" {component['version']}" if component.get("version") else ""
        lines.append(f"  {section}: {component.get('name')} (from {where}{version})")
    validation = info.get("validation", {})
    if validation:
        error = validation.get("max_abs_error")
        shown = f"{error:.2g}" if isinstance(error, int | float) else str(error)
        lines.append(f"  validated with onnxruntime {validation.get('onnxruntime')}: max abs error {shown} "
                     f"at batch sizes {validation.get('batch_sizes')}")
    return [printable(line) for line in lines]
