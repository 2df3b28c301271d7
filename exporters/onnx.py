"""The ``onnx`` exporter plugin: registration only (the work is in :mod:`aigc_kit.exporters.onnx_export`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class OnnxOptions(Options):
    """What to export, at which precision, and how to check it."""

    what: Literal["auto", "generator", "denoiser", "sampler"] = Field(
        "auto",
        description="generator: z -> image (GANs); denoiser: (x_t, t) -> prediction; sampler: the whole diffusion "
        "sampler as one graph. auto: generator for GANs, sampler for diffusion.",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="fp16 keeps fp32 inputs and outputs; int8 is QDQ quantization calibrated on the run's own "
        "sampler. Each is checked against PyTorch in fp32 (see docs/export.md for when each is faster).",
    )
    int8_mode: Literal["static", "dynamic"] = Field(
        "static", description="int8 only: static (calibrated activations) or dynamic (activation ranges at run time)."
    )
    calibration_samples: int = Field(32, ge=1, description="int8 only: samples drawn for calibration.")
    steps: int | None = Field(
        None, ge=1, description="sampler only: the default step count in the graph (the run's sampler's if omitted)."
    )
    sampler_graph: Literal["auto", "loop", "unrolled"] = Field(
        "auto",
        description="sampler only. loop: one ONNX Loop around one step; the step count can be chosen at run time. "
        "unrolled: one copy of the step per timestep, reading the same weights (stored once); the step count is "
        "fixed, and int8 calibrates each step's activations on their own. auto: unrolled for int8, loop otherwise.",
    )
    fp32_steps: int | None = Field(
        None,
        ge=0,
        description="int8 unrolled sampler only: how many of the first, noisiest steps stay fp32 (they settle each "
        "sample's layout, where quantization error changes the image most). Default: a fifth of the steps, rounded "
        "up.",
    )
    transposed_conv: Literal["keep", "subpixel"] = Field(
        "keep",
        description="subpixel: rewrite 2x-upsampling transposed convolutions as convolution + DepthToSpace (the "
        "same output; what int8 kernels run well). See docs/export.md for when it pays.",
    )
    pixels: Literal["float", "uint8"] = Field(
        "float", description="uint8: end the graph with the conversion to 0-255 pixels, NHWC."
    )
    opset: int = Field(
        18,
        ge=18,
        le=23,
        description="ONNX opset. 18 keeps GroupNorm decomposed, which onnxruntime and TensorRT both run.",
    )
    export_batch_size: int = Field(2, ge=1, description="The batch the graph is traced with (the batch axis stays dynamic).")
    validate_batch_sizes: tuple[int, ...] = Field(
        (1, 5), description="Batch sizes, besides the traced one, at which onnxruntime is compared with PyTorch."
    )
    atol: float | None = Field(
        None, gt=0, description="Largest allowed absolute difference from PyTorch (default: by graph and precision)."
    )
    rtol: float | None = Field(
        None, ge=0, description="Allowed difference relative to PyTorch's value, added to atol (default: by graph "
        "and precision)."
    )
    reference_check: bool = Field(
        True, description="Also run onnx's reference evaluator on one sample (one step of a sampler)."
    )
    seed: int = Field(0, description="Seeds the tracing, validation and calibration inputs.")

    @field_validator("validate_batch_sizes")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(size < 1 for size in value):
            raise ValueError("expected one or more positive batch sizes")
        return value


def build_onnx_exporter(options: OnnxOptions):
    from .onnx_export import OnnxExporter

    return OnnxExporter(options)


@hookimpl
def aigc_register_exporters():
    return [
        ComponentSpec(
            "onnx",
            build_onnx_exporter,
            "ONNX generator, denoiser or whole sampler (dynamic batch; fp32, fp16 or int8), checked against "
            "PyTorch with onnxruntime.",
            OnnxOptions,
        )
    ]
