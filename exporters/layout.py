"""How a diffusion sampler's graph is laid out: one ``Loop`` around a traced step, or the step unrolled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from aigc_kit.core.errors import UserError


@dataclass(frozen=True)
class SamplerLayout:
    """A sampler graph's layout: one ``Loop`` around the step, or one copy of the step per timestep."""

    unrolled: bool = False
    fp32_steps: int = 0
    """Unrolled int8 only: the first steps, kept fp32."""

    def fp32_nodes(self, model: onnx.ModelProto) -> list[str]:
        """The names of the nodes of the steps kept fp32 (none for a loop)."""
        if not self.unrolled or not self.fp32_steps:
            return []
        prefixes = tuple(f"step{index}/" for index in range(self.fp32_steps))
        return [node.name for node in model.graph.node if node.name.startswith(prefixes)]


def sampler_layout(options: Any, what: str, steps: int) -> SamplerLayout:
    """The layout the options ask for: ``auto`` unrolls int8 samplers, so that each step is calibrated on its own."""
    if what != "sampler":
        if options.sampler_graph != "auto":
            raise UserError(f"sampler_graph applies to a diffusion sampler graph, not to a {what} graph",
                            field="export.sampler_graph", hint="drop export.sampler_graph (or --sampler-graph)")
        if options.fp32_steps is not None:
            raise UserError(f"fp32_steps applies to an int8 sampler graph, not to a {what} graph",
                            field="export.fp32_steps", hint="drop export.fp32_steps")
        return SamplerLayout()
    unrolled = options.sampler_graph == "unrolled" or (options.sampler_graph == "auto" and options.precision == "int8")
    if options.fp32_steps is not None and not (unrolled and options.precision == "int8"):
        raise UserError("fp32_steps applies to an unrolled int8 sampler graph", field="export.fp32_steps",
                        given=options.fp32_steps, hint="use precision: int8 with sampler_graph: auto or unrolled")
    if not unrolled or options.precision != "int8":
        return SamplerLayout(unrolled=unrolled)
    fp32_steps = options.fp32_steps if options.fp32_steps is not None else -(-steps // 5)
    if fp32_steps >= steps:
        raise UserError(f"fp32_steps must leave at least one of the {steps} steps to quantize",
                        field="export.fp32_steps", expected=f"0 to {steps - 1}", given=fp32_steps)
    return SamplerLayout(unrolled=True, fp32_steps=fp32_steps)
