"""The ``onnx`` exporter plugin: registration only (the work is in :mod:`aigc_kit.exporters.onnx_export`)."""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class OnnxOptions(Options):
    """How to write and check the ONNX file."""

    opset: int = Field(
        18,
        ge=18,
        le=23,
        description="ONNX opset. 18 keeps GroupNorm decomposed, which onnxruntime and TensorRT both run.",
    )
    export_batch_size: int = Field(2, ge=1, description="The batch the graph is traced with (the batch axis stays dynamic).")
    validate_batch_sizes: tuple[int, ...] = Field(
        (1, 5), description="Batch sizes, other than the traced one, at which onnxruntime is compared with PyTorch."
    )
    atol: float = Field(1e-4, gt=0, description="Largest allowed absolute difference from PyTorch.")
    rtol: float = Field(
        0.0, ge=0, description="Allowed difference relative to PyTorch's value, added to atol (none by default)."
    )
    seed: int = Field(0, description="Seeds the validation noise.")


def build_onnx_exporter(options: OnnxOptions):
    from .onnx_export import OnnxExporter

    return OnnxExporter(options)


@hookimpl
def aigc_register_exporters():
    return [
        ComponentSpec(
            "onnx",
            build_onnx_exporter,
            "ONNX graph of noise -> sample with a dynamic batch axis, checked against PyTorch with onnxruntime.",
            OnnxOptions,
        )
    ]
