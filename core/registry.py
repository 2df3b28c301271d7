"""The plugin registry: the components the plugins offer, by kind and name, and building them.

Plugins are found and loaded by :mod:`.discovery` (entry points, local files,
versions, tracing); :class:`Registry` adds looking components up by kind and
name (bare, or ``plugin:name`` on a clash), validating their options and
building them with their context.

The Python API::

    from aigc_kit.core import registry
    registry.names("model")                       # ['dcgan', ...]
    registry.describe("model", "dcgan")           # description, options, defaults
    model = registry.create("model", "dcgan", resolution=64)

This module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from .callbacks import EVENTS
from .discovery import DISABLE_ENV, STRICT_ENV, TRACE_ENV, Discovery, PluginRecord, provider
from .errors import UserError, did_you_mean, from_validation_error
from .plugin_api import KINDS, ComponentSpec, Context, DatasetBundle, ModelBundle, accepts

__all__ = ["DISABLE_ENV", "STRICT_ENV", "TRACE_ENV", "PluginRecord", "Registry", "create", "default_registry", "describe",
           "describe_options", "names"]


class Registry(Discovery):
    """A pluggy plugin manager plus an index of the components the plugins offer (see :class:`~.discovery.Discovery`
    for its arguments).
    """

    # -- lookup ------------------------------------------------------------

    def specs(self, kind: str) -> list[ComponentSpec]:
        """Every component of ``kind`` from the loaded plugins, clashing names included."""
        _check_kind(kind)
        return list(self._specs[kind])

    def names(self, kind: str) -> list[str]:
        """The names that address components of ``kind``: bare where unique, ``plugin:name`` on a clash."""
        specs = self.specs(kind)
        counts: dict[str, int] = {}
        for spec in specs:
            counts[spec.name] = counts.get(spec.name, 0) + 1
        return sorted(spec.name if counts[spec.name] == 1 else f"{spec.plugin}:{spec.name}" for spec in specs)

    def spec(self, kind: str, name: str) -> ComponentSpec:
        """The spec addressed by ``name`` (bare or ``plugin:name``); :class:`UserError` if unknown or ambiguous."""
        specs = self.specs(kind)
        if ":" in name:
            plugin, _, component = name.partition(":")
            for spec in specs:
                if spec.plugin == plugin and spec.name == component:
                    return spec
            qualified = [f"{spec.plugin}:{spec.name}" for spec in specs]
            raise UserError(
                f"unknown {kind} {name!r}",
                hint=did_you_mean(name, qualified) or self._failed_hint(),
            )
        matches = [spec for spec in specs if spec.name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            providers = " and ".join(
                f"plugin {spec.plugin!r} ({provider(self.records[spec.plugin])})" for spec in matches
            )
            raise UserError(
                f"the {kind} name {name!r} is offered by {providers}",
                hint="say which one you mean: " + " or ".join(repr(f"{s.plugin}:{s.name}") for s in matches),
            )
        hint = did_you_mean(name, self.names(kind))
        failed = self._failed_hint()
        raise UserError(f"unknown {kind} {name!r}", hint="; ".join(h for h in (hint, failed) if h) or None)

    def _failed_hint(self) -> str | None:
        failed = [record.name for record in self.records.values() if record.status == "failed"]
        if failed:
            return f"plugin(s) {', '.join(sorted(failed))} failed to load; see `aigc-kit plugins`"
        return None

    def options(self, kind: str, name: str, values: dict[str, Any] | None = None, *, field_prefix: str = "") -> Any:
        """Validate ``values`` against the component's options model; :class:`UserError` names the bad field."""
        spec = self.spec(kind, name)
        try:
            return spec.options.model_validate(values or {})
        except ValidationError as exc:
            raise from_validation_error(exc, prefix=field_prefix, model=spec.options) from None

    def create(self, kind: str, name: str, /, **options: Any) -> Any:
        """Build the component ``name`` of ``kind`` from keyword options.

        ``data`` (a :class:`~aigc_kit.core.plugin_api.DatasetBundle`), ``data_shape``
        and ``conditions`` are the factory's :class:`~aigc_kit.core.plugin_api.Context`
        rather than options, for every kind: ``create("model", "dcgan", data_shape=(3, 32, 32))``,
        ``create("metric", "fid", data=create("dataset", "shapes"))``.
        """
        context = {key: options.pop(key) for key in CONTEXT_KEYS if key in options}
        return self.build(kind, name, self.options(kind, name, options), **context)

    def build(self, kind: str, name: str, options: Any, *, field: str | None = None, **context: Any) -> Any:
        """Call the factory of component ``name`` with validated ``options`` and its context (``data``,
        ``data_shape``, ``conditions``; shape and conditions default to the data's), and check that it returned
        the kind of object a ``kind`` must be.

        A factory named ``factory(options, context)`` gets a :class:`~aigc_kit.core.plugin_api.Context`;
        one written before contexts existed gets the keywords it names (``data_shape``, ``conditions``, ``data``).
        A factory that raises, or returns something else, is reported as one
        :class:`UserError` naming the plugin and the component (``--debug``
        shows the factory's traceback).
        """
        spec = self.spec(kind, name)
        record = self.records.get(spec.plugin)
        who = f"{kind} {name!r} of plugin {spec.plugin!r}" + (f" ({provider(record)})" if record else "")
        given = factory_context(**context)
        if accepts(spec.factory, "context"):
            arguments: dict[str, Any] = {"context": given}
        else:
            older = {"data": given.data, "data_shape": given.data_shape, "conditions": given.conditions}
            arguments = {key: value for key, value in older.items() if value and accepts(spec.factory, key)}
        try:
            built = spec.factory(options, **arguments)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{who} could not be built: {type(exc).__name__}: {exc}", field=field,
                            hint="check its options (aigc-kit plugins --json lists them); --debug shows where it "
                                 "failed") from exc
        expected = _BUILT[kind]
        if not expected[0](built):
            raise UserError(f"{who} returned {type(built).__name__}, not {expected[1]}", field=field,
                            hint="a bug in the plugin: tell its authors (aigc-kit plugins shows who they are)")
        return built

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        """The component's name, plugin, description and options (type, default, description)."""
        spec = self.spec(kind, name)
        record = self.records.get(spec.plugin)
        return {
            "kind": kind,
            "name": spec.name,
            "plugin": spec.plugin,
            "distribution": record.distribution if record else None,
            "description": spec.description,
            "options": describe_options(spec.options),
        }


CONTEXT_KEYS = ("data", "data_shape", "conditions")
"""What :meth:`Registry.create` takes as the factory's context rather than as options."""


def factory_context(data: DatasetBundle | None = None, data_shape: tuple[int, ...] | None = None,
                    conditions: dict[str, Any] | None = None) -> Context:
    """A factory's context: the data, and a shape and conditions that default to the data's."""
    if data is not None:
        data_shape = data_shape if data_shape is not None else tuple(data.info.shape)
        conditions = conditions if conditions is not None else dict(data.info.conditions)
    return Context(data, tuple(data_shape) if data_shape is not None else None, dict(conditions or {}))


def describe_options(options_model: Any) -> list[dict[str, Any]]:
    """Name, type, default and description of each field of a pydantic options model."""
    described = []
    for name, info in options_model.model_fields.items():
        annotation = info.annotation
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        described.append(
            {
                "name": name,
                "type": type_name,
                "required": info.is_required(),
                "default": default,
                "description": info.description or "",
            }
        )
    return described


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown component kind {kind!r}", hint=did_you_mean(kind, KINDS))


def _has(*attributes: str) -> Callable[[Any], bool]:
    return lambda built: all(hasattr(built, attribute) for attribute in attributes)


_BUILT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda built: isinstance(built, ModelBundle), "a ModelBundle"),
    "dataset": (lambda built: isinstance(built, DatasetBundle), "a DatasetBundle"),
    "loss": (_has("phases", "compute"), "a loss (phases and compute)"),
    "sampler": (_has("noise", "sample"), "a sampler (noise and sample)"),
    "metric": (_has("update", "compute"), "a metric (update and compute)"),
    "exporter": (_has("export"), "an exporter (export)"),
    "callback": (lambda built: any(hasattr(built, event) for event in EVENTS), "a callback (one or more on_* events)"),
}
"""What a factory of each kind must return: a check, and its name for the message."""


# -- the default registry ------------------------------------------------------

_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry with every installed plugin, created on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def names(kind: str) -> list[str]:
    """The component names of ``kind`` in the default registry."""
    return default_registry().names(kind)


def create(kind: str, name: str, /, **options: Any) -> Any:
    """Build a component from the default registry: ``create("sampler", "normal", truncation=2.0)``."""
    return default_registry().create(kind, name, **options)


def describe(kind: str, name: str) -> dict[str, Any]:
    """Describe a component of the default registry (see :meth:`Registry.describe`)."""
    return default_registry().describe(kind, name)
