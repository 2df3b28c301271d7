"""Export a trained generator, denoiser or whole sampler to ONNX, convert its precision, check it against PyTorch.

Three graphs (``what``):

- ``generator``: ``z`` -> ``image``: a noise-to-image sampler (a GAN's) with its network;
- ``denoiser``: ``x_t``, ``t`` -> ``prediction``: a diffusion model's network alone;
- ``sampler``: ``noise`` [, ``step_noise``] [, ``timesteps``] -> ``image``: the whole diffusion
  sampler as one ``Loop`` around one traced step, or that step unrolled once per timestep (the
  layout int8 uses, so that each step is calibrated on its own; :mod:`.onnx_graphs`).

Every export is checked before it is kept: the ONNX checker with full shape
inference, onnxruntime against PyTorch at several batch sizes with an absolute
and a relative tolerance, and onnx's reference evaluator on one small input.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from aigc_kit.core.device import eval_mode
from aigc_kit.core.errors import UserError, ValidationFailed
from aigc_kit.core.files import replacing
from aigc_kit.core.plugin_api import ExportRequest, is_stepwise

from . import onnx_validation as validation
from .layout import sampler_layout
from .metadata import properties as metadata_properties
from .onnx_graphs import (
    append_uint8_output,
    loop_sampler,
    set_metadata,
    subpixel_transposed_convs,
    unroll_sampler,
    with_defaults,
)
from .onnx_inputs import (
    GUIDANCE,
    LABEL,
    Conditioning,
    Graph,
    build_graph,
    carried,
    export_copy,
    landing,
    resolve_graph,
    sequence_tensor,
    state_names,
)
from .pixels import from_pixels

CALIBRATION_BATCH = 8
"""Samples per calibration batch of an unrolled sampler graph (the calibrator keeps every step's activations)."""


class OnnxExporter:
    """Writes an ONNX file with a dynamic batch axis, then validates it (see :meth:`export`)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def export(self, request: ExportRequest) -> dict[str, Any]:
        """Trace, convert, check; keep the file only if every check passes (else ``NAME.failed.onnx``)."""
        options = self.options
        path = Path(request.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        what = resolve_graph(options.what, request.sampler)
        if options.steps is not None and what != "sampler":
            raise UserError(f"steps apply to a diffusion sampler graph, not to a {what} graph", field="export.steps",
                            hint="drop export.steps (or --steps)")
        if options.pixels == "uint8" and len(request.sample_shape) != 3:
            raise UserError(f"uint8 pixels need image samples, and these have shape {tuple(request.sample_shape)}",
                            field="export.pixels", hint="use pixels: float")
        network = export_copy(request.network)
        sampler = _with_steps(request.sampler, options.steps) if what == "sampler" else request.sampler
        layout = sampler_layout(options, what, len(sampler.timesteps) if what == "sampler" else 0)
        started = time.perf_counter()
        with torch.no_grad(), eval_mode(network):
            graph = build_graph(what, network, sampler, request)
            model = trace(graph, options.opset, options.export_batch_size, options.seed)
            rewritten = None
            if options.transposed_conv == "subpixel":
                model, rewritten = subpixel_transposed_convs(model)
            step_bytes = model.ByteSize()
            if layout.unrolled:
                model = unroll_sampler(model, sampler.timesteps, sampler.final_timestep,
                                       uses_step_noise=sampler.uses_step_noise, sample_shape=request.sample_shape,
                                       second_weights_from=layout.fp32_steps if options.precision == "int8" else None,
                                       carried=carried(sampler))
            if options.precision != "fp32":
                from .precision import convert

                calibration = self._calibration(what, network, sampler, request, graph, layout.unrolled)
                model = convert(model, options.precision, calibration, options.int8_mode,
                                exclude=layout.fp32_nodes(model))
            core = model
            if what == "sampler" and not layout.unrolled:
                step_bytes = core.ByteSize()
                model = loop_sampler(core, sampler.timesteps, sampler.final_timestep,
                                     uses_step_noise=sampler.uses_step_noise, sample_shape=request.sample_shape,
                                     carried=carried(sampler))
            if what == "sampler":
                model = with_defaults(model, graph.conditioning.defaults)
            if options.pixels == "uint8":
                model = append_uint8_output(model, request.value_range)
        export_seconds = time.perf_counter() - started
        tolerance = validation.tolerance(options, what)
        report: dict[str, Any] = {"path": str(path), "what": what, "opset": options.opset,
                                  "precision": options.precision, "export_seconds": round(export_seconds, 2),
                                  "atol": tolerance[0], "rtol": tolerance[1]}
        if rewritten is not None:
            report["subpixel_rewrites"] = rewritten
        if what == "sampler":
            report["sampler_graph"] = "unrolled" if layout.unrolled else "loop"
            if layout.fp32_steps:
                report["fp32_steps"] = layout.fp32_steps
        with replacing(path) as temporary:  # a name of this export's own, removed however it ends
            onnx.save_model(model, temporary)
            try:
                with torch.no_grad(), eval_mode(network):
                    report.update(validation.validate(options, temporary, what, graph, network, sampler, request, tolerance))
                    if options.reference_check:
                        report["reference_evaluator"] = validation.reference_check(options, core, what, graph, tolerance,
                                                                                    layout, sampler)
            except ValidationFailed as exc:
                temporary.replace(path.with_name(path.stem + ".failed.onnx"))
                if what == "sampler" and options.precision == "int8":
                    advice = (f"keeping more of the first steps in fp32 may help (--option fp32_steps=N; this "
                              f"export kept {layout.fp32_steps} of {len(sampler.timesteps)})" if layout.unrolled else
                              "a Loop holds one int8 range per tensor for every step; --sampler-graph unrolled "
                              "calibrates each step on its own")
                    raise ValidationFailed(f"{exc}; {advice}", exc.report) from None
                raise
            if what == "sampler":
                report["step_bytes"] = step_bytes
            set_metadata(model, self.metadata(what, sampler, request, report, traced_sample_shape(model)))
            model.producer_name = request.metadata.get("aigc_kit.producer", "aigc-kit")
            model.producer_version = request.metadata.get("aigc_kit.producer_version", "")
            onnx.save_model(model, temporary)
        report["bytes"] = path.stat().st_size
        return report

    # -- what is traced ------------------------------------------------------------------------------------------

    def load(self, path: str | Path) -> Callable[..., np.ndarray]:
        """The exported file as a function of noise: ``run(noise, **conditions) -> samples`` (NCHW floats, as
        PyTorch gives them); ``conditions`` are the file's other inputs by name (``label=``, ``guidance_scale=``).

        For generator graphs and samplers without step noise; a denoiser takes more than noise.
        """
        from .metadata import parse as read_metadata

        session = validation.open_session(path)
        metadata = read_metadata(session.get_modelmeta().custom_metadata_map, path)
        conditions = {LABEL, GUIDANCE, "timesteps"}
        inputs = [spec["name"] for spec in metadata["inputs"] if spec["name"] not in conditions]
        if len(inputs) != 1:
            raise UserError(f"this {metadata['graph']} graph takes {', '.join(inputs)}, not noise alone",
                            file=str(path), hint="run it with onnxruntime directly")
        output = metadata["outputs"][0]
        dtypes = {spec["name"]: np.int64 if spec["dtype"] == "int64" else np.float32 for spec in metadata["inputs"]}

        def run(noise: np.ndarray, **given: Any) -> np.ndarray:
            feeds = {inputs[0]: np.asarray(noise, dtype=np.float32)}
            feeds.update({name: np.asarray(value, dtype=dtypes[name]) for name, value in given.items()})
            result = session.run([output["name"]], feeds)[0]
            return from_pixels(result, tuple(output["value_range"])) if output["dtype"] == "uint8" else result

        return run

    def _calibration(self, what: str, network: torch.nn.Module, sampler: Any, request: ExportRequest,
                     graph: Graph, unrolled: bool = False) -> list[dict[str, np.ndarray]]:
        """Inputs for int8 calibration, from the run's own sampler: its noise, or its denoising trajectory.

        An unrolled sampler graph is calibrated on whole runs from noise, so that
        each step's activations get their own ranges (they differ from the
        noisiest steps to the last); in batches, to bound the calibrator's memory.
        """
        generator = torch.Generator().manual_seed(self.options.seed + 2)
        count = self.options.calibration_samples
        conditioning = graph.conditioning
        if what == "generator":
            return [validation.numpy_feeds(graph.make_inputs(count, generator))]
        if unrolled:
            batches = []
            for start in range(0, count, CALIBRATION_BATCH):
                n = min(CALIBRATION_BATCH, count - start)
                feed = {"noise": sampler.noise(n, tuple(request.noise_shape), generator=generator).float(),
                        **conditioning.draw(n, generator)}
                if sampler.uses_step_noise:
                    feed["step_noise"] = torch.randn(len(sampler.timesteps), n, *request.sample_shape,
                                                     generator=generator)
                batches.append(validation.numpy_feeds(feed))
            return batches
        feeds: list[dict[str, np.ndarray]] = []
        x = sampler.noise(count, tuple(request.noise_shape), generator=generator).float()
        drawn = conditioning.draw(count, generator)
        guided = conditioning.sampling_conditions(drawn)
        states = state_names(carried(sampler))
        state = tuple(torch.zeros_like(x) for _ in states)
        sequence = sequence_tensor(sampler)
        for index, timestep in enumerate(sampler.timesteps):
            previous = landing(sampler, index)
            noise = torch.randn(x.shape, generator=generator) if sampler.uses_step_noise else None
            if what == "denoiser":
                feed = {"x_t": x, "t": torch.full((count,), timestep, dtype=torch.long)}
                if LABEL in drawn and conditioning.null_class:  # guided: the denoiser without a class and with one
                    feed = {"x_t": torch.cat([x, x]), "t": torch.cat([feed["t"], feed["t"]]),
                            LABEL: torch.cat([torch.full_like(drawn[LABEL], -1), drawn[LABEL]])}
            else:
                feed = {"x": x, "timestep": torch.tensor(timestep), "previous": torch.tensor(previous), **drawn}
                if noise is not None:
                    feed["noise"] = noise
                if states:
                    feed.update(index=torch.tensor(index), sequence=sequence, **dict(zip(states, state, strict=True)))
            feeds.append(validation.numpy_feeds(feed))
            if states:
                x, state = sampler.transition(network, x, timestep, previous, noise, **guided, state=state,
                                              index=torch.tensor(index), sequence=sequence)
            else:
                x = sampler.transition(network, x, timestep, previous, noise, **guided)
        return feeds

    # -- what the file says about itself ----------------------------------------------------------------------

    def metadata(self, what: str, sampler: Any, request: ExportRequest, report: dict[str, Any],
                 traced: tuple[int, ...] | None = None) -> dict[str, str]:
        """``metadata_props``: the run's provenance plus what the graph's inputs and outputs mean.

        ``traced``: one sample's shape as the written graph outputs it (channels first), which the metadata
        records rather than the data's (a network may make 3 channels of 4-channel data).
        """
        options = self.options
        sample_shape = list(traced or request.sample_shape)
        low, high = request.value_range
        image = {"channels": sample_shape[0], "resolution": sample_shape[1:], "value_range": [low, high]}
        prior = getattr(sampler, "prior", None)  # None: a plugin sampler that does not say; read as normal
        drawn = f"the {prior['kind']} prior in aigc_kit.prior" if prior else \
            "the sampler's prior (not recorded: its sampler has no prior attribute; standard normal assumed)"
        if what == "generator":
            inputs = [{"name": "z", "shape": ["batch", *request.noise_shape], "dtype": "float32",
                       "semantics": f"latent noise, from {drawn}", "latent_size": list(request.noise_shape)}]
        elif what == "denoiser":
            inputs = [{"name": "x_t", "shape": ["batch", *sample_shape], "dtype": "float32",
                       "semantics": "noisy sample at timestep t"},
                      {"name": "t", "shape": ["batch"], "dtype": "int64", "semantics": "integer timestep per sample"}]
        else:
            inputs = [{"name": "noise", "shape": ["batch", *sample_shape], "dtype": "float32",
                       "semantics": f"x_T, from {drawn}"}]
            if sampler.uses_step_noise:
                inputs.append({"name": "step_noise", "shape": ["steps", "batch", *sample_shape], "dtype": "float32",
                               "semantics": "fresh standard normal noise for each step"})
            if report.get("sampler_graph") == "loop":
                inputs.append({"name": "timesteps", "shape": ["steps"], "dtype": "int64", "optional": True,
                               "semantics": "decreasing timesteps to visit; defaults to the export's",
                               "default": list(sampler.timesteps)})
        inputs += Conditioning.of(request, what, sampler).specs(what)
        if options.pixels == "uint8":
            outputs = [{"name": "pixels", "shape": ["batch", *sample_shape[1:], sample_shape[0]], "dtype": "uint8",
                        "layout": "NHWC", "semantics": "image pixels, 0-255", **image}]
        else:
            name = "prediction" if what == "denoiser" else "image"
            semantics = "the denoiser's prediction" if what == "denoiser" else "image"
            outputs = [{"name": name, "shape": ["batch", *sample_shape], "dtype": "float32", "layout": "NCHW",
                        "semantics": semantics, **image}]
        sampler_info: dict[str, Any] = {"steps": len(sampler.timesteps)} if is_stepwise(sampler) else {}
        if "sampler_graph" in report:
            sampler_info["graph"] = report["sampler_graph"]
            sampler_info["timesteps"] = list(sampler.timesteps)
        if "fp32_steps" in report:
            sampler_info["fp32_steps"] = report["fp32_steps"]
        for attribute in ("eta", "prediction_type"):
            value = getattr(sampler, attribute, None)
            if value is None:
                value = getattr(getattr(sampler, "schedule", None), attribute, None)
            if value is not None:
                sampler_info[attribute] = value
        validation = {key: report[key] for key in ("batch_sizes", "max_abs_error", "max_rel_error", "mean_abs_error",
                                                   "atol", "rtol", "onnxruntime") if key in report}
        return metadata_properties({
            "family": "diffusion" if is_stepwise(sampler) else "generator", "graph": what, "inputs": inputs,
            "outputs": outputs, "sampling": sampler_info, "opset": str(options.opset),
            "prior": prior,
            "precision": options.precision, "validation": validation,
        }, request.metadata)


def trace(graph: Graph, opset: int, batch: int, seed: int) -> onnx.ModelProto:
    """``torch.onnx.export`` with every choice explicit: recent torch releases changed the defaults of each."""
    graph.module.eval()
    example = graph.make_inputs(batch, torch.Generator().manual_seed(seed))
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = (tuple(  # one entry, ``*values``: the graph modules take their inputs in input order
        {axis: dims.setdefault(label, torch.export.Dim(label, min=1, max=65536))
         for axis, label in graph.dynamic_axes.get(name, {}).items()} or None
        for name in graph.input_names
    ),)
    with _quiet_exporter():
        program = torch.onnx.export(
            graph.module,
            tuple(example[name] for name in graph.input_names),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _with_steps(sampler: Any, steps: int | None) -> Any:
    """The sampler with ``steps`` timesteps (the same spacing), or itself when ``steps`` is None."""
    if steps is None or steps == len(sampler.timesteps):
        return sampler
    if not hasattr(sampler, "with_steps"):
        raise UserError(f"this sampler cannot change its step count at export ({type(sampler).__name__})",
                        field="export.steps", hint="drop export.steps (or --steps)")
    try:
        return sampler.with_steps(steps)
    except ValueError as exc:
        raise UserError(str(exc), field="export.steps", given=steps) from None


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
            # Inputs that share the batch axis by design (x_t and t).
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def traced_sample_shape(model: Any) -> tuple[int, ...] | None:
    """One sample's shape (channels first) from the graph's first output, or None if a dimension is not fixed."""
    dims = [dim.dim_value if dim.HasField("dim_value") else None
            for dim in model.graph.output[0].type.tensor_type.shape.dim][1:]
    if not dims or any(dim is None or dim <= 0 for dim in dims):
        return None
    if model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 and len(dims) == 3:
        dims = [dims[2], dims[0], dims[1]]  # NHWC pixels
    return tuple(dims)
