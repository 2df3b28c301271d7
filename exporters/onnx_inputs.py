"""What is traced for each graph an export can be, and the inputs it takes: noise, timesteps, and conditions.

Three graphs (``what``): ``generator`` (``z`` -> image, a noise-to-image
sampler and its network), ``denoiser`` (``x_t``, ``t`` -> prediction) and
``sampler`` (one transition ``x, timestep, previous[, noise]`` -> the next x,
which :mod:`.onnx_graphs` loops or unrolls; a multistep sampler's transition
also takes ``index``, ``sequence`` and its carried ``state0``, ``state1``, ...
and returns the next state after x). A conditional model's graphs also
take ``label`` (int64, one class per sample; -1 is "no class" for a denoiser),
and a conditional diffusion sampler ``guidance_scale`` (float32, 0-dim), so
that a runtime chooses the class and the guidance of each call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aigc_kit.core import conditions
from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import Condition, ExportRequest, accepts, is_stepwise

LABEL, GUIDANCE = "label", "guidance_scale"


@dataclass(frozen=True)
class Conditioning:
    """The condition inputs of an export: a ``label`` when there are classes, a ``guidance_scale`` for a sampler."""

    classes: tuple[str, ...] = ()
    guidance: float | None = None
    """The sampler's guidance scale, the ``guidance_scale`` input's default; None: no such input."""
    null_class: bool = False
    """Whether the network takes -1 for "no class": it does when its sampler guides (classifier-free guidance)."""

    @classmethod
    def of(cls, request: ExportRequest, what: str, sampler: Any) -> Conditioning:
        label = request.conditions.get(LABEL)
        if label is None or not label.count:
            return cls()
        guides = is_stepwise(sampler) and accepts(sampler.transition, GUIDANCE)
        guidance = float(getattr(sampler, "guidance_scale", 1.0)) if guides and what == "sampler" else None
        return cls(tuple(label.classes), guidance, null_class=guides)

    def specs(self, what: str) -> list[dict[str, Any]]:
        """The metadata of the condition inputs (see :mod:`.metadata`)."""
        specs: list[dict[str, Any]] = []
        if self.classes:
            no_class = "; -1: no class (the unconditional prediction)" if what == "denoiser" and self.null_class else ""
            specs.append({"name": LABEL, "shape": ["batch"], "dtype": "int64", "classes": list(self.classes),
                          "semantics": f"the class of each sample, 0 to {len(self.classes) - 1}{no_class}"})
        if self.guidance is not None:
            specs.append({"name": GUIDANCE, "shape": [], "dtype": "float32", "optional": True,
                          "default": self.guidance,
                          "semantics": "classifier-free guidance w: 0 unconditional, 1 conditional, more follows "
                                       "the class more closely"})
        return specs

    @property
    def defaults(self) -> dict[str, np.ndarray]:
        """Default values of the inputs that have one: the guidance scale."""
        return {GUIDANCE: np.asarray(self.guidance, dtype=np.float32)} if self.guidance is not None else {}

    @property
    def names(self) -> list[str]:
        return ([LABEL] if self.classes else []) + ([GUIDANCE] if self.guidance is not None else [])

    def draw(self, n: int, generator: torch.Generator, guidance: float | None = None) -> dict[str, torch.Tensor]:
        """Random labels for ``n`` samples (every class likely among them) and the guidance scale to use."""
        drawn = conditions.draw({LABEL: Condition(classes=self.classes)}, n, generator) if self.classes else {}
        if self.guidance is not None:
            drawn[GUIDANCE] = torch.tensor(self.guidance if guidance is None else guidance, dtype=torch.float32)
        return drawn

    @staticmethod
    def sampling_conditions(inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The keyword arguments a sampler takes for ``inputs``: ``conditions`` and ``guidance_scale``."""
        options: dict[str, Any] = {}
        if LABEL in inputs:
            options["conditions"] = {LABEL: inputs[LABEL]}
        if GUIDANCE in inputs:
            options["guidance_scale"] = inputs[GUIDANCE]
        return options


@dataclass
class Graph:
    """One graph to trace: the module, its inputs' names and dynamic axes, and inputs for a batch size."""

    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    make_inputs: Callable[[int, torch.Generator], dict[str, torch.Tensor]]
    conditioning: Conditioning = Conditioning()


class _NamedInputs(torch.nn.Module):
    """A module whose positional inputs are the graph's, in ``names`` order (the tracer passes them so)."""

    def __init__(self, network: torch.nn.Module, sampler: Any, names: list[str]) -> None:
        super().__init__()
        self.network = network  # a submodule, so that an unrolled or looped graph stores its weights once
        self.sampler = sampler
        self.names = names

    def inputs(self, values: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, values, strict=True))


class GeneratorGraph(_NamedInputs):
    """``z`` [, ``label``] -> image: the sampler's own map from noise to samples."""

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        inputs = self.inputs(values)
        return self.sampler.sample(self.network, inputs["z"], **Conditioning.sampling_conditions(inputs))


class DenoiserGraph(_NamedInputs):
    """``(x_t, t[, label])`` -> the denoiser's prediction."""

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        inputs = self.inputs(values)
        extra = {LABEL: inputs[LABEL]} if LABEL in inputs else {}
        return self.network(inputs["x_t"], inputs["t"], **extra)


class StepGraph(_NamedInputs):
    """One sampler transition ``(x, timestep, previous[, noise][, index, sequence, state...][, label,
    guidance_scale])`` -> the next x (and the next state, for a multistep sampler)."""

    def forward(self, *values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = self.inputs(values)
        extra = Conditioning.sampling_conditions(inputs)
        count = carried(self.sampler)
        if count:
            extra.update(state=tuple(inputs[name] for name in state_names(count)), index=inputs["index"],
                         sequence=inputs["sequence"])
        result = self.sampler.transition(self.network, inputs["x"], inputs["timestep"], inputs["previous"],
                                         inputs.get("noise"), **extra)
        if not count:
            return result
        x_next, state = result
        return (x_next, *state)


def carried(sampler: Any) -> int:
    """How many tensors shaped like x a stepwise sampler carries between steps (0: none, a one-step sampler)."""
    return int(getattr(sampler, "carried", 0) or 0)


def state_names(count: int) -> list[str]:
    """The step graph's names of a multistep sampler's carried state."""
    return [f"state{k}" for k in range(count)]


def sequence_tensor(sampler: Any) -> torch.Tensor:
    """The timesteps a multistep transition reads: the sampler's, then where the last step lands."""
    return torch.tensor([*sampler.timesteps, sampler.final_timestep], dtype=torch.long)


def export_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` on the CPU, in fp32 and eval mode, to trace and check.

    The caller's network may live on a GPU, in bf16 or in train mode; tracing it
    in place would move or convert it under its owner, and NumPy needs CPU
    tensors to compare with onnxruntime.
    """
    return copy.deepcopy(network).to(device="cpu", dtype=torch.float32).eval()


def resolve_graph(what: str, sampler: Any) -> str:
    """The graph ``what`` asks for, checked against the sampler; ``auto`` picks the most useful one."""
    stepwise = is_stepwise(sampler)
    if what == "auto":
        return "sampler" if stepwise else "generator"
    if what == "sampler" and not stepwise:
        return "generator"  # a noise-to-image sampler is its generator graph
    if what == "denoiser" and not stepwise:
        raise UserError("only a diffusion model's network is a denoiser; this sampler maps noise to images directly",
                        field="export.what", expected="generator or sampler", given=what)
    if what == "generator" and stepwise:
        raise UserError("a diffusion model has no generator graph; export its denoiser, or the whole sampler",
                        field="export.what", expected="denoiser or sampler", given=what)
    return what


def build_graph(what: str, network: torch.nn.Module, sampler: Any, request: ExportRequest) -> Graph:
    """The module to trace for ``what``, with example inputs for any batch size."""
    noise_shape, sample_shape = tuple(request.noise_shape), tuple(request.sample_shape)
    conditioning = Conditioning.of(request, what, sampler)
    batch_axis = {0: "batch"}
    if what == "generator":
        names = ["z", *conditioning.names]

        def generator_inputs(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            return {"z": sampler.noise(n, noise_shape, generator=g), **conditioning.draw(n, g)}

        return Graph(GeneratorGraph(network, sampler, names), names, ["image"],
                     {name: batch_axis for name in names if name != GUIDANCE}, generator_inputs, conditioning)
    if what == "denoiser":
        names = ["x_t", "t", *conditioning.names]
        total = sampler.schedule.num_train_timesteps if hasattr(sampler, "schedule") else max(sampler.timesteps) + 1

        def denoiser_inputs(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            return {"x_t": torch.randn(n, *sample_shape, generator=g), "t": torch.randint(0, total, (n,), generator=g),
                    **conditioning.draw(n, g)}

        return Graph(DenoiserGraph(network, sampler, names), names, ["prediction"],
                     dict.fromkeys(names, batch_axis), denoiser_inputs, conditioning)

    def step_inputs(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        index = int(torch.randint(0, len(sampler.timesteps), (1,), generator=g))
        inputs = {"x": torch.randn(n, *sample_shape, generator=g),
                  "timestep": torch.tensor(sampler.timesteps[index]), "previous": torch.tensor(landing(sampler, index))}
        if sampler.uses_step_noise:
            inputs["noise"] = torch.randn(n, *sample_shape, generator=g)
        if count:
            inputs.update(index=torch.tensor(index), sequence=sequence_tensor(sampler),
                          **{name: torch.randn(n, *sample_shape, generator=g) for name in states})
        return {**inputs, **conditioning.draw(n, g)}

    count = carried(sampler)
    states = state_names(count)
    names = ["x", "timestep", "previous"] + (["noise"] if sampler.uses_step_noise else []) \
        + (["index", "sequence", *states] if count else []) + conditioning.names
    axes = {name: batch_axis for name in ("x", "noise", LABEL, *states) if name in names}
    if count:
        axes["sequence"] = {0: "sequence"}
    return Graph(StepGraph(network, sampler, names), names, ["x_next", *(f"{name}_next" for name in states)], axes,
                 step_inputs, conditioning)


def landing(sampler: Any, index: int) -> int:
    """The timestep a stepwise sampler lands on after ``timesteps[index]``."""
    return sampler.timesteps[index + 1] if index + 1 < len(sampler.timesteps) else sampler.final_timestep
