"""Every hook aigc-kit calls, in one place.

Every factory is ``factory(options, context)``: the validated options and a
:class:`~aigc_kit.core.plugin_api.Context` (the data the component is built
for); a factory that needs no context may take ``options`` alone.

A plugin implements any of these with a function of the same name marked
:data:`aigc_kit.core.plugin_api.hookimpl`. Every hook is called once per
plugin while the registry loads, with no arguments, and returns a list of
:class:`~aigc_kit.core.plugin_api.ComponentSpec` (possibly empty). A
misspelt hook name in a plugin is an error when the plugin is loaded.

Component names should be lower-case words joined by ``-`` (``gan-bce``);
two plugins may offer the same name, and a user then addresses each as
``plugin:name``.

Hook API version: :data:`aigc_kit.core.plugin_api.HOOK_API_VERSION`. The API
evolves compatibly within a major version: a hook may gain arguments (an
implementation may take fewer, and pluggy passes only those it names), and a
hook on its way out is marked with :func:`deprecated_hookspec`, so a plugin
implementing it is warned for at least one minor version before it goes.
"""

from __future__ import annotations

import pluggy

from .plugin_api import PROJECT_NAME, ComponentSpec

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


def deprecated_hookspec(name: str, since: str, removed_in: str, instead: str) -> pluggy.HookspecMarker:
    """The marker of a hook being retired: a plugin that implements it is warned when it is loaded.

    ``aigc-kit plugins`` shows the warning beside the plugin.
    """
    return hookspec(warn_on_impl=DeprecationWarning(
        f"the hook {name} is deprecated since aigc-kit {since} and goes in {removed_in}; implement {instead} instead"))


@hookspec
def aigc_register_models() -> list[ComponentSpec]:
    """Offer model components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options, context)`` and returns a
    :class:`~aigc_kit.core.plugin_api.ModelBundle`; ``context.data_shape`` is
    one data sample's shape and ``context.conditions`` what samples come with
    (a :class:`~aigc_kit.core.plugin_api.Context`).

    Example::

        @hookimpl
        def aigc_register_models():
            return [ComponentSpec("tiny", build_tiny, "A one-layer generator.", TinyOptions)]
    """


@hookspec
def aigc_register_losses() -> list[ComponentSpec]:
    """Offer loss components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options)`` and returns an object
    following :class:`~aigc_kit.core.plugin_api.Loss`: a list of ``phases``
    and ``compute(phase, batch, bundle, step) -> (loss, logs)``.

    Example::

        @hookimpl
        def aigc_register_losses():
            return [ComponentSpec("ragan", lambda options: RaganLoss(options), "Relativistic average GAN loss.",
                                  RaganOptions)]
    """


@hookspec
def aigc_register_samplers() -> list[ComponentSpec]:
    """Offer sampler components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options)`` and returns an object
    following :class:`~aigc_kit.core.plugin_api.Sampler`:
    ``noise(n, shape, generator, device)`` and ``sample(network, noise, generator)``;
    a sampler that also follows :class:`~aigc_kit.core.plugin_api.StepwiseSampler`
    is exported to ONNX as one loop.

    Example::

        @hookimpl
        def aigc_register_samplers():
            return [ComponentSpec("sphere", lambda options: SphereSampler(options), "Noise on a sphere.")]
    """


@hookspec
def aigc_register_datasets() -> list[ComponentSpec]:
    """Offer dataset components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options)`` and returns a
    :class:`~aigc_kit.core.plugin_api.DatasetBundle`: a map-style dataset of
    float tensors and its :class:`~aigc_kit.core.plugin_api.DatasetInfo`
    (shape, value range, how samples are pictured). Item ``i`` should depend
    only on the options and ``i``, so that runs resume exactly.

    Example::

        @hookimpl
        def aigc_register_datasets():
            return [ComponentSpec("stripes", build_stripes, "Coloured stripes.", StripesOptions)]
    """


@hookspec
def aigc_register_metrics() -> list[ComponentSpec]:
    """Offer metric components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options, context)`` and returns
    an object following :class:`~aigc_kit.core.plugin_api.Metric`:
    ``update(samples)`` and ``compute() -> dict[str, float]``; ``context.data``
    is the run's :class:`~aigc_kit.core.plugin_api.DatasetBundle` (real samples,
    or facts such as a mixture's mode centres).

    Example::

        @hookimpl
        def aigc_register_metrics():
            return [ComponentSpec("mean-brightness", build_brightness, "Mean pixel value.")]
    """


@hookspec
def aigc_register_exporters() -> list[ComponentSpec]:
    """Offer exporter components.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options)`` and returns an object
    following :class:`~aigc_kit.core.plugin_api.Exporter`: ``export(request)``
    writes the file an :class:`~aigc_kit.core.plugin_api.ExportRequest` names,
    checks it against PyTorch and returns a report; ``load(path)``, if offered,
    runs the file on noise (the conformance kit uses it).

    Example::

        @hookimpl
        def aigc_register_exporters():
            return [ComponentSpec("pt2", build_pt2_exporter, "A torch.export program.", Pt2Options)]
    """


@hookspec
def aigc_register_callbacks() -> list[ComponentSpec]:
    """Offer callback components: side work on a run's events.

    Called once when the registry loads the plugin, with no arguments.
    Return specs whose factory is ``factory(options)`` and returns an object
    with one or more of the event methods :data:`aigc_kit.core.callbacks.EVENTS`
    (``on_start(run)``, ``on_log(run, step, logs)``, ...); a run config lists
    callbacks under ``callbacks:`` (docs/hooks.md gives the events' order).

    Example::

        @hookimpl
        def aigc_register_callbacks():
            return [ComponentSpec("early-stopping", EarlyStopping, "Stop when a metric stops improving.",
                                  EarlyStoppingOptions)]
    """


HOOK_FOR_KIND = {
    "model": "aigc_register_models",
    "loss": "aigc_register_losses",
    "sampler": "aigc_register_samplers",
    "dataset": "aigc_register_datasets",
    "metric": "aigc_register_metrics",
    "exporter": "aigc_register_exporters",
    "callback": "aigc_register_callbacks",
}
"""The hook through which each component kind is registered."""
