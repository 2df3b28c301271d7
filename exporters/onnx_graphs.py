"""Graph surgery on exported ONNX models: a sampler loop around one traced step, uint8 pixels out.

Only ``onnx`` is imported here: these functions take and return ``onnx.ModelProto``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx.utils
from onnx import TensorProto, helper, numpy_helper

BATCH = "batch"
STEPS = "steps"


def loop_sampler(step: onnx.ModelProto, timesteps: Sequence[int], final_timestep: int, *,
                 uses_step_noise: bool, sample_shape: Sequence[int], carried: int = 0) -> onnx.ModelProto:
    """The whole sampler as one graph: an ONNX ``Loop`` whose body is ``step``.

    ``step`` maps ``(x, timestep, previous[, noise])`` to the next ``x``
    (``timestep`` and ``previous`` are 0-dim int64). The result takes ``noise``
    (x_T), ``step_noise`` (``(steps, batch, *sample_shape)``, only when the sampler
    adds noise at each step) and ``timesteps``, an input whose default is the
    export's sequence, so a caller may pass another decreasing sequence and
    choose the step count at run time. The step's weights live in the body,
    once: the file is no bigger than one step.

    A multistep sampler's step (``carried`` > 0) also takes ``index`` (the
    iteration), ``sequence`` (the timesteps and the final one) and
    ``state0``.. (zeros before the first step), and returns the next state
    after x: the loop carries it along with x.

    Step inputs after those (a ``label``, a ``guidance_scale``) are the same at
    every step: they become inputs of the whole graph (:func:`with_defaults`
    gives them default values).
    """
    invariant = _invariant_inputs(step, uses_step_noise, carried)
    states = [f"state{k}" for k in range(carried)]
    rename = _prefixer("step/")
    body_graph = onnx.GraphProto()
    body_graph.CopyFrom(step.graph)
    _rename_graph(body_graph, rename)
    # The weights live in the body, once: onnxruntime treats a subgraph's own initializers as constants
    # (pre-packing convolution weights, folding), but not values the body reads from the outer graph.
    initializers = list(body_graph.initializer)

    image_type = [BATCH, *sample_shape]
    index, cond_in, cond_out = "iteration", "condition", "condition_out"
    head = [
        helper.make_node("Gather", ["timesteps", index], [rename("timestep")], name="step/take_timestep"),
        helper.make_node("Add", [index, "one"], ["next_index"], name="step/next_index"),
        helper.make_node("Gather", ["timesteps_and_final", "next_index"], [rename("previous")],
                         name="step/take_previous"),
        helper.make_node("Identity", [cond_in], [cond_out], name="step/keep_going"),
    ]
    if uses_step_noise:
        head.append(helper.make_node("Gather", ["step_noise", index], [rename("noise")], name="step/take_noise"))
    if carried:
        head += [helper.make_node("Identity", [index], [rename("index")], name="step/take_index"),
                 helper.make_node("Identity", ["timesteps_and_final"], [rename("sequence")], name="step/take_sequence")]
    head += [helper.make_node("Identity", [value.name], [rename(value.name)], name=f"step/take_{value.name}")
             for value in invariant]
    body = helper.make_graph(
        head + list(body_graph.node),
        "sampler_step",
        [helper.make_tensor_value_info(index, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(rename(name), TensorProto.FLOAT, image_type) for name in ["x", *states])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(output.name, TensorProto.FLOAT, image_type)
           for output in body_graph.output[:1 + carried])],
        initializer=initializers,
        # no value_info: the step's (from before a precision change, say) could contradict the loop's types
    )
    outer_nodes = [
        helper.make_node("Shape", ["timesteps"], ["steps_shape"], name="steps_shape"),
        helper.make_node("Squeeze", ["steps_shape", "zero_axis"], ["step_count"], name="step_count"),
        helper.make_node("Concat", ["timesteps", "final_timestep"], ["timesteps_and_final"], axis=0,
                         name="timesteps_and_final"),
        *_zero_states(carried),
        helper.make_node("Loop", ["step_count", "true", "noise", *(f"{name}_initial" for name in states)],
                         ["image", *(f"{name}_final" for name in states)], name="sampler_loop", body=body),
    ]
    constants = [
        numpy_helper.from_array(np.asarray(timesteps, dtype=np.int64), "timesteps"),
        numpy_helper.from_array(np.asarray([final_timestep], dtype=np.int64), "final_timestep"),
        numpy_helper.from_array(np.asarray(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "zero_axis"),
        numpy_helper.from_array(np.asarray(True), "true"),
        *([numpy_helper.from_array(np.zeros(1, dtype=np.float32), "state_zero")] if carried else []),
    ]
    inputs = [helper.make_tensor_value_info("noise", TensorProto.FLOAT, image_type)]
    if uses_step_noise:
        inputs.append(helper.make_tensor_value_info("step_noise", TensorProto.FLOAT, [STEPS, *image_type]))
    # An input with an initializer of the same name: the initializer is its default value.
    inputs.append(helper.make_tensor_value_info("timesteps", TensorProto.INT64, [STEPS]))
    inputs += invariant
    graph = helper.make_graph(
        outer_nodes, "sampler", inputs, [helper.make_tensor_value_info("image", TensorProto.FLOAT, image_type)],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name=step.producer_name,
                              producer_version=step.producer_version)
    model.ir_version = step.ir_version
    model.functions.extend(step.functions)
    return model


def unroll_sampler(step: onnx.ModelProto, timesteps: Sequence[int], final_timestep: int, *,
                   uses_step_noise: bool, sample_shape: Sequence[int],
                   second_weights_from: int | None = None, carried: int = 0) -> onnx.ModelProto:
    """The whole sampler as one graph with one copy of ``step`` per timestep, each reading the same weights.

    Inputs ``noise`` [, ``step_noise``], output ``image``; the step count is
    fixed. Step ``i``'s nodes are named ``step{i}/...`` and it hands
    ``step{i}/x`` to the next, so that each step's values are distinct tensors
    (a quantizer calibrates each step's activations on their own) and a step
    can be told apart by name (:func:`unrolled_step`). With
    ``second_weights_from`` k, steps from k on read a second copy of the
    weights, so that quantizing those steps leaves the first k in fp32.
    Inputs the same at every step are inputs of the whole graph, as in
    :func:`loop_sampler`; a multistep sampler's state goes from each step
    (``step{i}/<state output>``) to the next, zeros into the first.
    """
    invariant = _invariant_inputs(step, uses_step_noise, carried)
    states = [f"state{k}" for k in range(carried)]
    state_outputs = [output.name for output in step.graph.output[1:1 + carried]]
    weights = {tensor.name for tensor in step.graph.initializer}
    initializers = list(step.graph.initializer)
    if second_weights_from is not None:
        initializers += [_renamed_tensor(tensor, f"late/{tensor.name}") for tensor in step.graph.initializer]
    sequence = [*timesteps, final_timestep]
    nodes = _zero_states(carried)
    if carried:
        initializers += [numpy_helper.from_array(np.asarray(sequence, dtype=np.int64), "sequence"),
                         numpy_helper.from_array(np.zeros(1, dtype=np.float32), "state_zero")]
    x, state = "noise", [f"{name}_initial" for name in states]
    for index in range(len(timesteps)):
        prefix = f"step{index}/"
        late = second_weights_from is not None and index >= second_weights_from
        initializers += [numpy_helper.from_array(np.asarray(sequence[index], dtype=np.int64), prefix + "timestep"),
                         numpy_helper.from_array(np.asarray(sequence[index + 1], dtype=np.int64), prefix + "previous")]
        if uses_step_noise or carried:
            initializers.append(numpy_helper.from_array(np.asarray(index, dtype=np.int64), prefix + "index"))
        if uses_step_noise:
            nodes.append(helper.make_node("Gather", ["step_noise", prefix + "index"], [prefix + "noise"],
                                          name=prefix + "take_noise"))
        outer = {"x": x, "timestep": prefix + "timestep", "previous": prefix + "previous", "noise": prefix + "noise",
                 "index": prefix + "index", "sequence": "sequence", **dict(zip(states, state, strict=True)),
                 step.graph.output[0].name: prefix + "x", **{value.name: value.name for value in invariant}}

        def rename(name: str, prefix: str = prefix, outer: dict[str, str] = outer, late: bool = late) -> str:
            if not name:
                return name
            if name in weights:
                return f"late/{name}" if late else name
            return outer.get(name, prefix + name)

        for number, node in enumerate(step.graph.node):
            if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for attribute in node.attribute):
                raise ValueError(f"the step graph has a node with a subgraph ({node.op_type}); it cannot be unrolled")
            copied = onnx.NodeProto()
            copied.CopyFrom(node)
            del copied.metadata_props[:]  # the exporter's source locations, which would repeat once per step
            copied.input[:] = [rename(name) for name in node.input]
            copied.output[:] = [rename(name) for name in node.output]
            copied.name = prefix + (node.name or f"{node.op_type}_{number}")
            nodes.append(copied)
        x, state = prefix + "x", [prefix + name for name in state_outputs]
    nodes.append(helper.make_node("Identity", [x], ["image"], name="image"))
    image_type = [BATCH, *sample_shape]
    inputs = [helper.make_tensor_value_info("noise", TensorProto.FLOAT, image_type)]
    if uses_step_noise:
        inputs.append(helper.make_tensor_value_info("step_noise", TensorProto.FLOAT, [len(timesteps), *image_type]))
    inputs += invariant
    graph = helper.make_graph(nodes, "sampler", inputs,
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, image_type)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name=step.producer_name,
                              producer_version=step.producer_version)
    model.ir_version = step.ir_version
    model.functions.extend(step.functions)
    return model


def unrolled_step(model: onnx.ModelProto, index: int, state_outputs: Sequence[str] = ()) -> onnx.ModelProto:
    """Step ``index`` of an :func:`unroll_sampler` graph alone: ``x`` (and ``state0``.. for a multistep sampler,
    whose step graph's state outputs are ``state_outputs``) and the graph's other inputs -> ``x_next``."""
    sources = {"noise" if index == 0 else f"step{index - 1}/x": "x"}
    for k, output in enumerate(state_outputs):
        sources[f"state{k}_initial" if index == 0 else f"step{index - 1}/{output}"] = f"state{k}"
    inputs = list(sources) + [value.name for value in model.graph.input if value.name != "noise"]
    typed = onnx.shape_inference.infer_shapes(model)  # the extractor needs the types of the values it cuts at
    extracted = onnx.utils.Extractor(typed).extract_model(inputs, [f"step{index}/x"])
    renamed = {**sources, f"step{index}/x": "x_next"}
    for value in [*extracted.graph.input, *extracted.graph.output]:
        value.name = renamed.get(value.name, value.name)
    for node in extracted.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    return extracted


def _invariant_inputs(step: onnx.ModelProto, uses_step_noise: bool, carried: int = 0) -> list[onnx.ValueInfoProto]:
    """The step graph's inputs after ``x, timestep, previous[, noise][, index, sequence, state0..]``; an error if
    those do not come first."""
    names = [value.name for value in step.graph.input]
    expected = ["x", "timestep", "previous"] + (["noise"] if uses_step_noise else []) \
        + (["index", "sequence", *(f"state{k}" for k in range(carried))] if carried else [])
    if names[:len(expected)] != expected:
        raise ValueError(f"the step graph's inputs are {names}, expected {expected} first")
    return [_copied(value) for value in step.graph.input[len(expected):]]


def _zero_states(carried: int) -> list[onnx.NodeProto]:
    """Nodes making ``state{k}_initial``, zeros shaped like ``noise``, from the initializer ``state_zero``."""
    if not carried:
        return []
    nodes = [helper.make_node("Shape", ["noise"], ["noise_shape"], name="noise_shape")]
    nodes += [helper.make_node("Expand", ["state_zero", "noise_shape"], [f"state{k}_initial"],
                               name=f"state{k}_initial") for k in range(carried)]
    return nodes


def with_defaults(model: onnx.ModelProto, defaults: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with default values for some of its inputs (an input's initializer of the same name is its default).

    Added last, after any precision change: a converter would turn a float default into fp16, and onnxruntime's
    calibration sessions warn about every initializer that is also an input.
    """
    inputs = {value.name for value in model.graph.input}
    unknown = sorted(set(defaults) - inputs)
    if unknown:
        raise ValueError(f"defaults for inputs the graph does not take: {unknown}")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.initializer.extend(numpy_helper.from_array(np.asarray(value), name)
                                    for name, value in defaults.items())
    return result


def _copied(message: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copied = onnx.ValueInfoProto()
    copied.CopyFrom(message)
    return copied


def _renamed_tensor(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copied = onnx.TensorProto()
    copied.CopyFrom(tensor)
    copied.name = name
    return copied


def append_uint8_output(model: onnx.ModelProto, value_range: tuple[float, float]) -> onnx.ModelProto:
    """Map the first output (NCHW floats in ``value_range``) to uint8 NHWC pixels inside the graph."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    source = graph.output[0]
    low, high = value_range
    dims = [d.dim_param or d.dim_value for d in source.type.tensor_type.shape.dim]
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(low, dtype=np.float32), "pixels/low"),
        numpy_helper.from_array(np.asarray(255.0 / (high - low), dtype=np.float32), "pixels/scale"),
        numpy_helper.from_array(np.asarray(0.0, dtype=np.float32), "pixels/min"),
        numpy_helper.from_array(np.asarray(255.0, dtype=np.float32), "pixels/max"),
    ])
    graph.node.extend([
        helper.make_node("Sub", [source.name, "pixels/low"], ["pixels/shifted"], name="pixels/shift"),
        helper.make_node("Mul", ["pixels/shifted", "pixels/scale"], ["pixels/scaled"], name="pixels/scale"),
        helper.make_node("Round", ["pixels/scaled"], ["pixels/rounded"], name="pixels/round"),
        helper.make_node("Clip", ["pixels/rounded", "pixels/min", "pixels/max"], ["pixels/clipped"],
                         name="pixels/clip"),
        helper.make_node("Transpose", ["pixels/clipped"], ["pixels/nhwc"], perm=[0, 2, 3, 1], name="pixels/to_nhwc"),
        helper.make_node("Cast", ["pixels/nhwc"], ["pixels"], to=TensorProto.UINT8, name="pixels/to_uint8"),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                      [dims[0], dims[2], dims[3], dims[1]]))
    return result


def set_metadata(model: onnx.ModelProto, properties: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``properties`` (keys sorted)."""
    del model.metadata_props[:]
    for key in sorted(properties):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(properties[key])


def _prefixer(prefix: str) -> Callable[[str], str]:
    def rename(name: str) -> str:
        return prefix + name if name else name

    return rename


def _rename_graph(graph: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """Rename every value and node of ``graph`` (not of nested subgraphs, which step graphs do not have)."""
    for number, node in enumerate(graph.node):
        if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attribute in node.attribute):
            raise ValueError(f"the step graph has a node with a subgraph ({node.op_type}); it cannot be looped")
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = rename(node.name or f"{node.op_type}_{number}")
    for collection in (graph.input, graph.output, graph.value_info):
        for value in collection:
            value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = rename(sparse.values.name)


# Which kernel tap of a stride-2, 4-wide, pad-1 transposed convolution feeds output phase ``a``
# (0: even rows, 1: odd rows) from input offset ``dy - 1``: k = a + 3 - 2 dy, when inside 0..3.
_SUBPIXEL_TAPS = {0: (3, 1, None), 1: (None, 2, 0)}


def subpixel_transposed_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite each 2x-upsampling ``ConvTranspose`` (kernel 4, stride 2, pad 1) as ``Conv`` + ``DepthToSpace``.

    The output is the same: output pixel (2m + a, 2n + b) of the transposed
    convolution is a 3x3 convolution around input pixel (m, n) with the kernel
    taps of phase (a, b), so one 3x3 convolution with 4 x C_out channels
    computes all four phases and DepthToSpace interleaves them. Plain
    convolutions are what int8 kernels cover well (transposed ones much less),
    at 9/4 of the multiply-adds. Returns the model and the number rewritten.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if node.op_type == "ConvTranspose" and len(node.input) > 1 else None
        if (weight is None or list(attributes.get("strides", [])) != [2, 2]
                or list(attributes.get("pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
                or attributes.get("group", 1) != 1 or any(d != 1 for d in attributes.get("dilations", [1, 1]))
                or any(attributes.get("output_padding", [0, 0])) or "output_shape" in attributes
                or numpy_helper.to_array(weight).shape[2:] != (4, 4)):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)  # (C_in, C_out, 4, 4)
        c_in, c_out = w.shape[:2]
        folded = np.zeros((2, 2, c_out, c_in, 3, 3), dtype=w.dtype)
        for a in (0, 1):
            for b in (0, 1):
                for dy, ky in enumerate(_SUBPIXEL_TAPS[a]):
                    for dx, kx in enumerate(_SUBPIXEL_TAPS[b]):
                        if ky is not None and kx is not None:
                            folded[a, b, :, :, dy, dx] = w[:, :, ky, kx].T
        prefix = f"subpixel/{rewritten}"
        graph.initializer.append(numpy_helper.from_array(folded.reshape(4 * c_out, c_in, 3, 3), f"{prefix}/weight"))
        inputs = [node.input[0], f"{prefix}/weight"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.tile(bias, 4), f"{prefix}/bias"))
            inputs.append(f"{prefix}/bias")
        nodes.append(helper.make_node("Conv", inputs, [f"{prefix}/phases"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      name=f"{prefix}/conv"))
        nodes.append(helper.make_node("DepthToSpace", [f"{prefix}/phases"], list(node.output), blocksize=2,
                                      mode="DCR", name=f"{prefix}/interleave"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return result, rewritten
