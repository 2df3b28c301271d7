"""fp16 and int8 versions of an exported fp32 graph, with onnxruntime's own conversion tools."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from aigc_kit.core.errors import UserError

QUANTIZED_OPERATORS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


def convert(model: onnx.ModelProto, precision: str, calibration: list[dict[str, np.ndarray]],
            int8_mode: str = "static", exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """``model`` at ``precision`` (fp16 or int8); its inputs and outputs stay fp32 (and int64).

    ``exclude`` names nodes that int8 leaves in fp32.
    """
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        return to_int8(model, calibration, int8_mode, exclude)
    raise ValueError(f"unknown precision {precision!r}")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in fp16, with casts at the fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    converted.topological_sort()  # the converter appends its input casts after the nodes that read them
    return converted.model


def to_int8(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], mode: str,
            exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """QDQ int8: weights per channel (int8), activations (uint8) calibrated on ``calibration`` (min-max).

    ``dynamic`` quantizes the weights and finds activation ranges at run time instead.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[dict[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantizer_log = logging.getLogger()  # the quantizer warns through the root logger about 1-D weights
    with tempfile.TemporaryDirectory(prefix="aigc-kit-int8-") as folder, _level(quantizer_log, logging.ERROR):
        source, prepared, quantized = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(model, source)
        # onnxruntime's pre-processing merges identical initializers, which would hand the weights kept for the
        # excluded nodes to the quantized ones: with exclusions, shape inference only.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, skip_optimization=bool(exclude))
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=list(exclude))
            result = onnx.load_model(quantized)
            if not any(node.op_type == "DynamicQuantizeLinear" for node in result.graph.node):
                raise UserError(
                    "dynamic int8 quantization found nothing to quantize in this graph (it covers matrix products "
                    "and plain convolutions, not transposed convolutions)",
                    field="export.int8_mode", given=mode, hint="use int8_mode: static",
                )
            return result
        # Only the operators that carry the arithmetic: quantizing lookups and reshapes of constant
        # tables (a diffusion schedule's) gains nothing, and onnxruntime's quantizer rejects it.
        quantize_static(str(prepared), str(quantized), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPERATORS, nodes_to_exclude=list(exclude))
        return onnx.load_model(quantized)


@contextlib.contextmanager
def _level(logger: logging.Logger, level: int) -> Iterator[None]:
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
