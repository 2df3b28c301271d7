"""Export ``noise -> sampler.sample(network, noise)`` to ONNX and check it against PyTorch."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from aigc_kit.core.device import evaluating
from aigc_kit.core.errors import UserError, ValidationFailed

NOISE_INPUT = "noise"
SAMPLE_OUTPUT = "sample"


class SamplingGraph(torch.nn.Module):
    """The module that is exported: noise in, sample out. The network is a submodule, so weights appear once."""

    def __init__(self, network: torch.nn.Module, sampler: Any) -> None:
        super().__init__()
        self.network = network
        self.sampler = sampler

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.sampler.sample(self.network, noise)


class OnnxExporter:
    """Writes an ONNX file with a dynamic batch axis, then validates it (see :meth:`export`)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def export(self, network: torch.nn.Module, sampler: Any, noise_shape: tuple[int, ...], path: str,
               metadata: dict[str, str]) -> dict[str, Any]:
        """Export, then fail loudly unless onnxruntime agrees with PyTorch at several batch sizes."""
        options = self.options
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        graph = SamplingGraph(network, sampler).float().eval()
        device = next(network.parameters()).device
        example = sampler.noise(options.export_batch_size, noise_shape,
                                generator=torch.Generator().manual_seed(options.seed)).to(device)
        started = time.perf_counter()
        with torch.no_grad(), evaluating(graph), _quiet_exporter():
            # Every choice is explicit: recent torch releases changed the defaults of each.
            program = torch.onnx.export(
                graph,
                (example,),
                None,
                dynamo=True,
                opset_version=options.opset,
                input_names=[NOISE_INPUT],
                output_names=[SAMPLE_OUTPUT],
                dynamic_shapes={"noise": {0: torch.export.Dim("batch", min=1, max=65536)}},
                external_data=False,
                optimize=True,
                verbose=False,
            )
        model = program.model_proto
        onnx.helper.set_model_props(model, {**metadata, "aigc_kit.opset": str(options.opset)})
        temporary = path.with_name(f".{path.name}.tmp")
        onnx.save_model(model, temporary)
        export_seconds = time.perf_counter() - started
        report = {"path": str(path), "opset": options.opset, "export_seconds": round(export_seconds, 2)}
        try:
            report.update(self.validate(temporary, graph, sampler, noise_shape, device))
        except ValidationFailed:
            failed = path.with_name(path.stem + ".failed.onnx")
            temporary.replace(failed)
            raise
        temporary.replace(path)
        report["bytes"] = path.stat().st_size
        return report

    def validate(self, path: Path, graph: torch.nn.Module, sampler: Any, noise_shape: tuple[int, ...],
                 device: torch.device) -> dict[str, Any]:
        """Check the file with onnx.checker, then compare onnxruntime with PyTorch at each batch size."""
        options = self.options
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ValidationFailed(f"the ONNX checker rejected the model: {exc}", {"path": str(path)}) from None
        session = open_session(path)
        generator = torch.Generator().manual_seed(options.seed + 1)
        batch_sizes = sorted({options.export_batch_size, *options.validate_batch_sizes})
        results = []
        for batch in batch_sizes:
            noise = sampler.noise(batch, noise_shape, generator=generator)
            with torch.no_grad(), evaluating(graph):
                expected = graph(noise.to(device)).float().cpu().numpy()
            actual = session.run([SAMPLE_OUTPUT], {NOISE_INPUT: noise.numpy().astype(np.float32)})[0]
            results.append(compare(expected, actual, options.atol, options.rtol, batch))
        report = {
            "batch_sizes": batch_sizes,
            "max_abs_error": max(r["max_abs_error"] for r in results),
            "max_rel_error": max(r["max_rel_error"] for r in results),
            "atol": options.atol,
            "rtol": options.rtol,
            "checks": results,
        }
        failures = [r for r in results if not r["passed"]]
        if failures:
            worst = max(failures, key=lambda r: r["max_abs_error"])
            raise ValidationFailed(
                f"onnxruntime disagrees with PyTorch at batch size {worst['batch_size']}: "
                f"max abs error {worst['max_abs_error']:.3g} at index {worst['where']} "
                f"(allowed {options.atol:g} + {options.rtol:g} x |expected|)",
                report,
            )
        return report


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float, batch_size: int) -> dict[str, Any]:
    """Absolute and relative differences of two outputs, and whether ``|a - e| <= atol + rtol |e|`` holds."""
    if expected.shape != actual.shape:
        return {"batch_size": batch_size, "passed": False, "max_abs_error": float("inf"), "max_rel_error": float("inf"),
                "where": f"shape {actual.shape} instead of {expected.shape}"}
    difference = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    relative = difference / np.maximum(np.abs(expected), 1e-12)
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    passed = bool(np.all(difference <= atol + rtol * np.abs(expected)))
    return {
        "batch_size": batch_size,
        "passed": passed,
        "max_abs_error": float(difference.max()),
        "max_rel_error": float(relative.max()),
        "where": [int(i) for i in worst],
    }


def open_session(path: str | Path) -> Any:
    """An onnxruntime session on the CPU provider; a clear error when onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "onnxruntime is not installed, so the export cannot be validated",
            hint="pip install 'aigc-kit[cpu]' (or '[gpu]' for onnxruntime-gpu)",
        ) from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and optional-dependency warnings for the block."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            # torch.export's own use of a deprecated pytree API; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
