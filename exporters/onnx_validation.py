"""Checks of an exported ONNX file before it is kept: the ONNX checker, onnxruntime against PyTorch at several
batch sizes (and step counts and guidance scales), and onnx's reference evaluator on one small input."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from aigc_kit.core.errors import ValidationFailed
from aigc_kit.core.plugin_api import ExportRequest

from .layout import SamplerLayout
from .onnx_graphs import unrolled_step
from .onnx_inputs import GUIDANCE, LABEL, Graph, carried, landing, sequence_tensor, state_names
from .pixels import from_pixels

TOLERANCES = {  # (graph kind, precision) -> (atol, rtol), for outputs in a [-1, 1]-sized range
    ("network", "fp32"): (1e-4, 1e-4),
    ("sampler", "fp32"): (1e-3, 1e-3),  # rounding differences grow over the steps
    ("network", "fp16"): (2e-2, 2e-2),
    ("sampler", "fp16"): (5e-2, 5e-2),
    ("network", "int8"): (2.5e-1, 0.0),
    ("sampler", "int8"): (5e-1, 0.0),
}
"""Default tolerances; options ``atol``/``rtol`` override them. Measured margins are in docs/export.md."""



@dataclass(frozen=True)
class Case:
    """One validation run: a batch size, and optionally a step sequence or a guidance scale other than the export's."""

    batch: int
    timesteps: list[int] | None = None
    guidance: float | None = None



def tolerance(options: Any, what: str) -> tuple[float, float]:
    """(atol, rtol) for a graph: the options' if given, else the defaults for its kind and precision."""
    atol, rtol = TOLERANCES[("sampler" if what == "sampler" else "network", options.precision)]
    return (options.atol if options.atol is not None else atol,
            options.rtol if options.rtol is not None else rtol)


def validate(options: Any, path: Path, what: str, graph: Graph, network: torch.nn.Module, sampler: Any,
             request: ExportRequest, tolerance: tuple[float, float]) -> dict[str, Any]:
    """The ONNX checker, then onnxruntime against PyTorch at every batch size (and, for a sampler, step count)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValidationFailed(f"the ONNX checker rejected the model: {exc}", {"path": str(path)}) from None
    session = open_session(path)
    output = session.get_outputs()[0].name
    generator = torch.Generator().manual_seed(options.seed + 1)
    batch_sizes = sorted({options.export_batch_size, *options.validate_batch_sizes})
    cases = [Case(batch) for batch in batch_sizes]
    takes_timesteps = any(value.name == "timesteps" for value in session.get_overridable_initializers())
    if what == "sampler" and takes_timesteps and len(sampler.timesteps) > 1:
        cases.append(Case(batch_sizes[0], timesteps=sampler.timesteps[::2]))  # a step count chosen at run time
    if graph.conditioning.guidance is not None:  # guidance chosen at run time: none, and more than the default
        cases += [Case(batch_sizes[0], guidance=w) for w in (0.0, graph.conditioning.guidance + 2.0)]
    results = []
    for case in cases:
        inputs, expected = expected_case(what, graph, network, sampler, request, case, generator)
        actual = session.run([output], numpy_feeds(inputs))[0]
        if options.pixels == "uint8":
            actual = from_pixels(actual, request.value_range)
        atol = tolerance[0] + (_half_level(request.value_range) if options.pixels == "uint8" else 0.0)
        result = compare(expected, actual, atol, tolerance[1], case.batch)
        if case.timesteps is not None:
            result["steps"] = len(case.timesteps)
        if GUIDANCE in inputs:
            result["guidance_scale"] = float(inputs[GUIDANCE])
        results.append(result)
    report = {
        "batch_sizes": batch_sizes,
        "max_abs_error": max(r["max_abs_error"] for r in results),
        "max_rel_error": max(r["max_rel_error"] for r in results),
        "mean_abs_error": max(r["mean_abs_error"] for r in results),
        "checks": results,
        "onnxruntime": _onnxruntime_version(),
    }
    failures = [r for r in results if not r["passed"]]
    if failures:
        worst = max(failures, key=lambda r: r["max_abs_error"])
        raise ValidationFailed(
            f"onnxruntime disagrees with PyTorch at batch size {worst['batch_size']}"
            + (f" with {worst['steps']} steps" if "steps" in worst else "")
            + (f" at guidance scale {worst['guidance_scale']:g}" if "guidance_scale" in worst else "")
            + f": max abs error {worst['max_abs_error']:.3g} at index {worst['where']} "
            f"(allowed {tolerance[0]:g} + {tolerance[1]:g} x |expected|; precision {options.precision})",
            report,
        )
    return report

def expected_case(what: str, graph: Graph, network: torch.nn.Module, sampler: Any, request: ExportRequest,
          case: Case, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Inputs of one check and PyTorch's output for them (float, NCHW)."""
    batch, timesteps = case.batch, case.timesteps
    if what != "sampler":  # a denoiser's labels include "no class" (-1), which guided sampling passes it
        inputs = graph.make_inputs(batch, generator)
        if what == "denoiser" and LABEL in inputs and graph.conditioning.null_class:
            inputs[LABEL][::2] = -1
        return inputs, graph.module(*(inputs[name] for name in graph.input_names)).float().numpy()
    if timesteps is not None:
        sampler = copy.copy(sampler)
        sampler.timesteps = list(timesteps)
    noise = sampler.noise(batch, tuple(request.noise_shape), generator=generator)
    inputs = {"noise": noise, **graph.conditioning.draw(batch, generator, case.guidance)}
    step_noise = None
    if sampler.uses_step_noise:
        step_noise = torch.randn(len(sampler.timesteps), *noise.shape, generator=generator)
        inputs["step_noise"] = step_noise
    if timesteps is not None:
        inputs["timesteps"] = torch.tensor(timesteps, dtype=torch.long)
    fresh = {"step_noise": step_noise} if step_noise is not None else {}  # the protocol's stochastic case only
    expected = sampler.sample(network, noise, **fresh, **graph.conditioning.sampling_conditions(inputs))
    return inputs, expected.float().numpy()

def reference_check(options: Any, core: onnx.ModelProto, what: str, graph: Graph, tolerance: tuple[float, float],
                     layout: SamplerLayout, sampler: Any) -> dict[str, Any]:
    """onnx's reference evaluator on one sample of the traced graph (one step, for a sampler) agrees too.

    An unrolled sampler is checked on one of its steps, taken out of the
    graph: the first quantized one at int8.
    """
    from onnx.reference import ReferenceEvaluator

    generator = torch.Generator().manual_seed(options.seed + 3)
    inputs = graph.make_inputs(1, generator)
    label = "one step" if what == "sampler" else what
    states = state_names(carried(sampler)) if what == "sampler" else []
    if layout.unrolled:
        index = layout.fp32_steps
        core = unrolled_step(core, index, graph.output_names[1:])
        inputs = {**inputs, "timestep": torch.tensor(sampler.timesteps[index]),
                  "previous": torch.tensor(landing(sampler, index))}
        if states:
            inputs.update(index=torch.tensor(index), sequence=sequence_tensor(sampler))
        feeds = {"x": inputs["x"], **{name: inputs[name] for name in [*states, *graph.conditioning.names]}}
        if sampler.uses_step_noise:
            feeds["step_noise"] = torch.randn(len(sampler.timesteps), *inputs["x"].shape, generator=generator)
            inputs["noise"] = feeds["step_noise"][index]
        label = f"step {index + 1} of {len(sampler.timesteps)}"
    else:
        feeds = inputs
    expected = graph.module(*(inputs[name] for name in graph.input_names))
    expected = (expected[0] if isinstance(expected, tuple) else expected).float().numpy()  # x, not the state
    try:
        actual = ReferenceEvaluator(core, new_ops=_reference_qdq_ops()).run(None, numpy_feeds(feeds))[0]
    except Exception as exc:  # noqa: BLE001 - an operator the reference evaluator lacks is not the model's fault
        return {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    result = compare(expected, np.asarray(actual), tolerance[0], tolerance[1], 1)
    result["graph"] = label
    if not result["passed"]:
        raise ValidationFailed(
            f"onnx's reference evaluator disagrees with PyTorch on {result['graph']}: "
            f"max abs error {result['max_abs_error']:.3g} at index {result['where']}",
            {"reference_evaluator": result},
        )
    return result


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float, batch_size: int) -> dict[str, Any]:
    """Absolute and relative differences of two outputs, and whether ``|a - e| <= atol + rtol |e|`` holds."""
    if expected.shape != actual.shape:
        return {"batch_size": batch_size, "passed": False, "max_abs_error": float("inf"), "max_rel_error": float("inf"),
                "mean_abs_error": float("inf"), "where": f"shape {actual.shape} instead of {expected.shape}"}
    difference = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    relative = difference / np.maximum(np.abs(expected), 1e-12)
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    passed = bool(np.all(difference <= atol + rtol * np.abs(expected)))
    return {
        "batch_size": batch_size,
        "passed": passed,
        "max_abs_error": float(difference.max()),
        "max_rel_error": float(relative.max()),
        "mean_abs_error": float(difference.mean()),
        "where": [int(i) for i in worst],
    }


def open_session(path: str | Path) -> Any:
    """An onnxruntime session on the CPU provider; a clear error when onnxruntime is missing or installed twice."""
    from .providers import import_onnxruntime

    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the overridable `timesteps` default is intended
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _reference_qdq_ops() -> list[type]:
    """The QuantizeLinear/DequantizeLinear pair for onnx's reference evaluator at opsets 13-18.

    It implements them from opset 19 only and reads their attributes from the
    newest schema, so the newest implementation serves: its added attributes
    (block size, output type, saturation) default to the opset-13 arithmetic.
    """
    from onnx.reference.ops import op_dequantize_linear, op_quantize_linear

    def newest(module: Any, name: str) -> type:
        versions = [attribute for attribute in dir(module) if attribute.startswith(name + "_")]
        return getattr(module, max(versions, key=lambda attribute: int(attribute.rsplit("_", 1)[1])))

    return [type("DequantizeLinear", (newest(op_dequantize_linear, "DequantizeLinear"),), {"op_domain": ""}),
            type("QuantizeLinear", (newest(op_quantize_linear, "QuantizeLinear"),), {"op_domain": ""})]


def numpy_feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Inputs by name as onnxruntime takes them."""
    return {name: value.numpy() if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}


def _half_level(value_range: tuple[float, float]) -> float:
    """Half of one of 255 pixel levels, in the value range's units: what rounding to uint8 may add."""
    return 0.5 * (value_range[1] - value_range[0]) / 255.0 + 1e-6


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
