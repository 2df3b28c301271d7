"""What a plugin author imports: the hook marker, the spec objects and the component protocols.

A plugin is a module with functions marked ``@hookimpl`` whose names match the
hooks in :mod:`aigc_kit.core.hookspecs`. Each hook returns a list of
:class:`ComponentSpec`; the registry validates names, detects clashes and
builds components from the specs only when a run needs them, so a plugin's
module should stay cheap to import (import torch inside factories).

A complete plugin::

    from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl

    class TinyOptions(Options):
        width: int = 32

    def build_tiny(options, context):
        from my_package.networks import build   # heavy imports stay here
        return build(options, context.data_shape)

    @hookimpl
    def aigc_register_models():
        return [ComponentSpec("tiny", build_tiny, "A tiny generator.", TinyOptions)]

This module does not import torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from .shapes import square_image_size as square_image_size  # for model factories, which import it from here

PROJECT_NAME = "aigc_kit"
"""The pluggy project name and the entry-point group plugins register under."""

HOOK_API_VERSION = "1.0"
"""The version of the hook API in :mod:`aigc_kit.core.hookspecs`."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin function as the implementation of the hook of the same name."""

KINDS = ("model", "loss", "sampler", "dataset", "metric", "exporter", "callback")
"""The component kinds, each registered through its own hook."""


class Options(BaseModel):
    """Base class of a component's options: unknown keys are rejected, defaults are documented.

    Give every field a ``Field(description=...)``: the descriptions are shown
    by ``aigc-kit plugins --json`` and in the docs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoOptions(Options):
    """For components that take no options."""


@dataclass(frozen=True)
class ComponentSpec:
    """A component a plugin offers: a name, a factory, a one-line description and an options model.

    ``factory(options)`` builds the component from a validated instance of
    ``options``; model factories also receive ``data_shape``, the shape of
    one data sample (for example ``(3, 32, 32)``), so a model can fill in its
    resolution and channels from the data.
    ``plugin`` is filled in by the registry with the name of the plugin that
    returned the spec.
    """

    name: str
    factory: Callable[..., Any]
    description: str
    options: type[Options] = NoOptions
    plugin: str = ""


# ---------------------------------------------------------------------------
# What the factories return. These describe torch objects but import no torch.


@dataclass(frozen=True)
class OptimizerSettings:
    """An optimizer by name and its hyperparameters; a loss phase proposes one, the config may override it."""

    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.0


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a loss: which networks it trains, how often it repeats per step.

    A GAN loss has a ``discriminator`` phase (``repeat`` = critic steps)
    followed by a ``generator`` phase; a diffusion loss has one phase.
    The core loop keeps one optimizer per phase, covering the ``trains`` networks.
    A phase with ``uses_data=False`` (a GAN's generator phase) is given the
    last batch again instead of a new one: it only needs its size and device.
    ``after_step(bundle)``, if set, runs after each optimizer step of the
    phase (weight clipping, for example).
    """

    name: str
    trains: tuple[str, ...]
    repeat: int = 1
    uses_data: bool = True
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    after_step: Callable[[ModelBundle], None] | None = None


@dataclass
class ModelBundle:
    """What a model factory returns: named networks, the one that samples, and its noise shape.

    ``networks`` maps names to ``torch.nn.Module`` (``{"generator": ..., "discriminator": ...}``);
    ``sampling_network`` names the network a sampler turns noise into images with;
    ``noise_shape`` is the shape of one noise sample (``(latent_dim,)`` for a GAN).
    ``shared_options`` are options the model fixes for the loss and the sampler it is
    run with: a diffusion model's noise schedule and prediction type, which its loss
    and sampler must agree on. A run config sets them once, in the model's section;
    the run passes them to the loss's and the sampler's factories, whose options
    must accept them, and refuses a config whose loss or sampler section contradicts them.
    ``batch_multiple``: the batch size must be a multiple of it (PacGAN packing
    judges that many samples together); checked by ``aigc-kit validate``.
    ``conditions``: what the networks are conditioned on (``{"label": Condition(...)}``,
    empty for an unconditional model); each network then takes them as keyword
    arguments (``generator(z, label=labels)``, ``denoiser(x_t, t, label=labels)``).
    """

    networks: dict[str, Any]
    sampling_network: str
    noise_shape: tuple[int, ...]
    shared_options: dict[str, Any] = field(default_factory=dict)
    batch_multiple: int = 1
    conditions: dict[str, Condition] = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    """Something a dataset's samples come with, that a model can be conditioned on.

    ``kind="label"``: a class label, an integer in ``range(len(classes))``;
    ``classes`` are the classes' names, in label order. (Other kinds, a vector
    or an embedding, would say their shape here.)
    """

    kind: Literal["label"] = "label"
    classes: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """How many classes a label takes."""
        return len(self.classes)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": list(self.classes)}


@dataclass(frozen=True)
class DatasetInfo:
    """What the loop needs to know about a dataset's samples.

    ``shape`` is one sample's shape; samples are float tensors with values in
    ``value_range``; ``preview`` says how samples are pictured
    (``"grid"`` of images, or ``"scatter"`` for 2-D points, drawn over the
    ``landmarks``, such as a mixture's mode centres). ``conditions`` names
    what each sample comes with (``{"label": Condition(classes=(...))}``);
    a dataset with conditions yields mappings ``{"sample": tensor, "label": int}``,
    one without yields the sample tensor itself.
    """

    shape: tuple[int, ...]
    value_range: tuple[float, float] = (-1.0, 1.0)
    preview: Literal["grid", "scatter"] = "grid"
    landmarks: tuple[tuple[float, ...], ...] = ()
    conditions: dict[str, Condition] = field(default_factory=dict)


SAMPLE_KEY = "sample"
"""The key of the sample itself in a dataset item that carries conditions."""


def sample_of(item: Any) -> Any:
    """The sample of a dataset item: the item itself, or its ``"sample"`` when it carries conditions."""
    return item[SAMPLE_KEY] if isinstance(item, Mapping) else item


def accepts(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (or any, through ``**kwargs``).

    New arguments reach a plugin's methods only if it names them, as pluggy passes
    hook arguments: a plugin written before conditions existed keeps working.
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(parameter.name == name or parameter.kind is inspect.Parameter.VAR_KEYWORD
               for parameter in parameters)


@dataclass
class DatasetBundle:
    """What a dataset factory returns: a map-style ``torch.utils.data.Dataset`` and its :class:`DatasetInfo`."""

    dataset: Any
    info: DatasetInfo


@dataclass(frozen=True)
class Context:
    """What a factory gets besides its options, ``factory(options, context)``: the data its component is for.

    In a run, ``data`` is the run's :class:`DatasetBundle`, ``data_shape`` one
    sample's shape and ``conditions`` what its samples come with. Outside a run
    (``registry.create``, the conformance kit) each is what the caller gave:
    ``None`` or empty when nothing was.
    """

    data: DatasetBundle | None = None
    data_shape: tuple[int, ...] | None = None
    conditions: dict[str, Condition] = field(default_factory=dict)


class Loss(Protocol):
    """A loss component: its phases, and the loss of one phase for one batch.

    ``compute`` may also take ``conditions`` (the batch's, for the conditions the
    model takes: pass them to its networks as keyword arguments) and ``sampler``
    (the run's, to draw training noise from its prior with :func:`training_noise`);
    the loop passes each only to a ``compute`` that names it.
    """

    phases: list[Phase]

    def compute(self, phase: Phase, batch: Any, bundle: ModelBundle, step: int, conditions: Any = None,
                sampler: Any = None) -> tuple[Any, dict[str, float]]:
        """Return ``(loss, logs)``: a scalar tensor to minimise and floats to log under the phase's name."""


class Metric(Protocol):
    """A metric: accumulates generated samples, then computes numbers about them."""

    def update(self, samples: Any) -> None:
        """Add a batch of generated samples."""

    def compute(self) -> dict[str, float]:
        """The metric's values over every sample added since it was created or last computed; then reset."""


class Sampler(Protocol):
    """A sampler: the prior noise, and the map from noise to images with the sampling network.

    A sampler for conditional models takes ``conditions`` (``{"label": LongTensor}``)
    in :meth:`sample` and passes them to the network as keyword arguments.
    """

    def noise(self, n: int, shape: tuple[int, ...], generator: Any = None, device: Any = None) -> Any:
        """Draw ``n`` noise samples of ``shape`` (a ``torch.Tensor`` of shape ``(n, *shape)``)."""

    def sample(self, network: Any, noise: Any, generator: Any = None, conditions: Any = None) -> Any:
        """Turn ``noise`` into samples with ``network`` (given ``conditions``); must be traceable for export."""


class StepwiseSampler(Sampler, Protocol):
    """A sampler that walks a denoiser down a timestep sequence, one :meth:`transition` at a time.

    The ONNX exporter recognises it by these attributes and exports it as one
    loop over a traced transition (weights once, the step count chosen at run
    time), and the network as a denoiser ``network(x_t, t)``. It calls nothing
    else than what is listed here:

    - :meth:`noise`, :attr:`timesteps`, :attr:`final_timestep`,
      :attr:`uses_step_noise` and :meth:`transition`;
    - :meth:`sample`, to check the exported graph against: with
      ``step_noise`` (one noise tensor per step, stacked: ``(steps, n, ...)``)
      only when :attr:`uses_step_noise`, with ``conditions`` only for a
      conditional model, with ``guidance_scale`` only when :meth:`transition`
      takes it (a tensor when traced);
    - optionally ``with_steps(steps)`` (a copy with ``steps`` timesteps, the
      same spacing), for ``export.steps``; ``guidance_scale``, the default of
      a guided export's ``guidance_scale`` input (1 if absent); ``prior``, the
      noise it draws, for the metadata (``{"kind": "normal"}``, say); ``eta``
      and ``prediction_type``, recorded in the metadata when present; and
      ``schedule.num_train_timesteps``, the range of ``t`` a denoiser export
      is checked over (else up to the largest of :attr:`timesteps`);
    - optionally ``carried``, for a multistep sampler (below).

    A multistep sampler (DPM-Solver++, UniPC) remembers earlier steps: it sets
    ``carried`` to the number of tensors shaped like x it carries from one
    step to the next, and its :meth:`transition` then also takes ``state``
    (a tuple of that many tensors, zeros before the first step), ``index``
    (the step's position, a 0-dim int64 tensor) and ``sequence`` (a 1-D int64
    tensor: :attr:`timesteps`, then :attr:`final_timestep`), and returns
    ``(x_next, next_state)``. The exporter's loop carries the state and hands
    the step its index and the sequence, so a step count chosen at run time
    reaches the step's own logic (warm-up orders, the last steps' order).
    """

    timesteps: list[int]
    """The timesteps visited, noisiest first."""
    final_timestep: int
    """Where the last transition lands (-1: the clean end of the process)."""
    uses_step_noise: bool
    """Whether each transition takes fresh noise."""
    carried: int = 0
    """Tensors shaped like x that each transition hands to the next (a multistep sampler's memory); 0: none."""

    def transition(self, network: Any, x_t: Any, timestep: Any, previous: Any, noise: Any = None) -> Any:
        """One step from ``x_t`` at ``timestep`` to ``previous`` (ints, or 0-dim int64 tensors when traced).

        ``noise`` is the step's fresh noise when :attr:`uses_step_noise`, else
        None. A conditional sampler also takes ``conditions`` (passed on to the
        network); a guided one ``guidance_scale``. Traced for export: tensor
        operations only, no Python branches on tensor values.
        """


def training_noise(sampler: Any, n: int, shape: tuple[int, ...], device: Any = None) -> Any:
    """The noise a network trains on: the sampler's prior, without its sampling-time tricks.

    A sampler may offer ``training_noise(n, shape, device)`` for that (the
    ``normal`` sampler draws untruncated latents there: truncation is for
    sampling only); otherwise its ``noise`` is the prior.
    """
    draw = getattr(sampler, "training_noise", None) or sampler.noise
    return draw(n, shape, device=device)


def is_stepwise(sampler: Any) -> bool:
    """Whether ``sampler`` offers the :class:`StepwiseSampler` attributes."""
    return all(hasattr(sampler, name) for name in ("timesteps", "final_timestep", "uses_step_noise", "transition"))


@dataclass
class ExportRequest:
    """What an exporter is given.

    ``network`` is the trained sampling network (its EMA weights when the run kept
    them), in eval mode; an exporter must leave it as it is (the ONNX exporter
    traces a copy on the CPU in fp32, whatever device and dtype it is given);
    ``sampler`` the run's sampler; ``noise_shape`` the shape of
    one noise sample; ``sample_shape`` and ``value_range`` describe one sample the
    sampler returns; ``metadata`` is the run's provenance (producer, plugins and
    their versions, the config's hash), to be stored in the file; ``path`` is
    where to write. ``conditions`` are what the network is conditioned on
    (``ModelBundle.conditions``: a label's classes), which the exported file
    should take as inputs; ``model_options`` are the model's options, for an
    exporter that needs more than the network.
    """

    network: Any
    sampler: Any
    noise_shape: tuple[int, ...]
    sample_shape: tuple[int, ...]
    value_range: tuple[float, float]
    path: str
    metadata: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)


class Exporter(Protocol):
    """An exporter: writes the sampling network and its sampler to a file and validates it."""

    def export(self, request: ExportRequest) -> dict[str, Any]:
        """Write the file ``request.path`` names; return a report (a JSON-able dict).

        Raise :class:`~aigc_kit.core.errors.ValidationFailed` when the written
        model disagrees with PyTorch, and leave no file at ``request.path``.
        """

    def load(self, path: str) -> Callable[..., Any]:
        """Optional: the written file as a function ``run(noise, **conditions) -> samples`` on NumPy arrays.

        ``conditions`` are the file's condition inputs by name: ``label`` (int64, one
        class per sample) for a conditional model, ``guidance_scale`` for a guided sampler.

        The conformance kit (:func:`aigc_kit.testing.check_exporter`) compares it with
        PyTorch; the ``onnx`` exporter offers it for generator and sampler graphs.
        """
